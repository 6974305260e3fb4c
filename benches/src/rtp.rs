//! The RTP generator and checker: PCMU-sized packets streamed both ways through a relay for
//! every call, each carrying its send time, and on the far side the count, order and one-way
//! latency of what arrived; the relay's CPU seconds over the same window give packets relayed
//! per CPU-second.
//!
//! It knows nothing of how the calls were set up (SIP through callbridge, `ng` commands to
//! rtpengine): a relay is measured by the addresses it gave each end ([`CallMedia`]) and its
//! pid, so both relays are measured by the same code in the same conditions.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;

use crate::process::{cpu_seconds, loadavg};

/// RTP header (12 bytes) + 160-byte PCMU payload (20 ms at 8 kHz).
const RTP_HEADER: usize = 12;
const PAYLOAD: usize = 160;
/// After the last packet is sent, how long receivers keep listening for stragglers.
const DRAIN: Duration = Duration::from_millis(1000);

/// The tool's two RTP sockets for one call and where each sends through the relay.
pub struct CallMedia {
    pub phone_rtp: Arc<UdpSocket>,
    pub callee_rtp: Arc<UdpSocket>,
    /// Relay addresses: where the phone sends (the relay's SDP towards the phone) and where the
    /// callee sends (its SDP towards the callee).
    pub relay_for_phone: SocketAddr,
    pub relay_for_callee: SocketAddr,
}

/// An RTP socket on an ephemeral loopback port for `side` ("phone", "callee").
pub async fn bind_rtp(side: &str) -> Result<UdpSocket, String> {
    UdpSocket::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("bind {side} RTP: {e}"))
}

/// What to stream.
#[derive(Clone, Debug)]
pub struct StreamConfig {
    pub seconds: f64,
    /// Packets per second per direction per call.
    pub pps: u32,
    /// Send slots per packet interval: calls are spread over this many phases so the sender does
    /// not emit every call's packet in the same instant.
    pub slots: u32,
    /// Fail when any packet is lost or cannot be sent.
    pub fail_on_loss: bool,
}

/// Streams RTP both ways through the relay for every call and prints loss, latency and the
/// relay process's CPU per packet. `pid` is the relay's process, `server` its name in the
/// report.
pub async fn stream<'a>(
    config: &StreamConfig,
    calls: impl IntoIterator<Item = &'a CallMedia>,
    pid: &str,
    server: &str,
) -> Result<(), String> {
    let calls: Vec<&CallMedia> = calls.into_iter().collect();
    // Streaming.
    let base = Instant::now();
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let per_socket = (config.seconds * f64::from(config.pps)) as usize + 16;
    let mut receivers = Vec::with_capacity(calls.len() * 2);
    for call in &calls {
        receivers.push(tokio::spawn(receive(
            call.callee_rtp.clone(),
            0,
            base,
            stop_rx.clone(),
            per_socket,
        )));
        receivers.push(tokio::spawn(receive(
            call.phone_rtp.clone(),
            1,
            base,
            stop_rx.clone(),
            per_socket,
        )));
    }
    let targets: Vec<(Arc<UdpSocket>, SocketAddr, Arc<UdpSocket>, SocketAddr)> = calls
        .iter()
        .map(|c| {
            (
                c.phone_rtp.clone(),
                c.relay_for_phone,
                c.callee_rtp.clone(),
                c.relay_for_callee,
            )
        })
        .collect();
    let slots = config.slots as usize;
    let tick = Duration::from_secs_f64(1.0 / (f64::from(config.pps) * f64::from(config.slots)));
    let total_ticks = (config.seconds * f64::from(config.pps)) as u64 * u64::from(config.slots);

    let cpu_cb0 = cpu_seconds(pid)?;
    let cpu_tool0 = cpu_seconds("self")?;
    let load0 = loadavg();
    let wall0 = Instant::now();
    let sender = tokio::spawn(async move {
        let mut sent = [0u64; 2];
        let mut send_errors = 0u64;
        let mut late_ticks = 0u64;
        let mut packet = [0u8; RTP_HEADER + PAYLOAD];
        for (i, b) in packet[RTP_HEADER..].iter_mut().enumerate() {
            *b = 0xFF ^ (i as u8);
        }
        let mut interval = tokio::time::interval(tick);
        // Burst: a late tick is caught up, so the offered rate stays pps on average.
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        for k in 0..total_ticks {
            let scheduled = interval.tick().await;
            if scheduled.elapsed() > tick {
                late_ticks += 1;
            }
            let slot = (k % slots as u64) as usize;
            let seq = (k / slots as u64) as u16;
            for (i, (phone_rtp, to_a, callee_rtp, to_b)) in
                targets.iter().enumerate().skip(slot).step_by(slots)
            {
                let now = base.elapsed().as_nanos() as u64;
                fill_rtp(&mut packet, seq, (i as u32) << 1, now);
                match phone_rtp.try_send_to(&packet, *to_a) {
                    Ok(_) => sent[0] += 1,
                    Err(_) => send_errors += 1,
                }
                let now = base.elapsed().as_nanos() as u64;
                fill_rtp(&mut packet, seq, ((i as u32) << 1) | 1, now);
                match callee_rtp.try_send_to(&packet, *to_b) {
                    Ok(_) => sent[1] += 1,
                    Err(_) => send_errors += 1,
                }
            }
        }
        (sent, send_errors, late_ticks)
    });
    let (sent, send_errors, late_ticks) = sender.await.map_err(|e| e.to_string())?;
    let send_wall = wall0.elapsed();
    tokio::time::sleep(DRAIN).await;
    let _ = stop.send(true);
    let cpu_cb1 = cpu_seconds(pid)?;
    let cpu_tool1 = cpu_seconds("self")?;
    let wall = wall0.elapsed();
    let load1 = loadavg();

    let mut received = [0u64; 2];
    let mut out_of_order = [0u64; 2];
    let mut latencies: [Vec<u32>; 2] = [Vec::new(), Vec::new()];
    for r in receivers {
        let s = r.await.map_err(|e| e.to_string())?;
        received[s.direction] += s.received;
        out_of_order[s.direction] += s.out_of_order;
        latencies[s.direction].extend_from_slice(&s.latencies_us);
    }

    let cb_cpu = cpu_cb1 - cpu_cb0;
    let tool_cpu = cpu_tool1 - cpu_tool0;
    let total_sent = sent[0] + sent[1];
    let total_received = received[0] + received[1];
    let mut all: Vec<u32> = latencies.iter().flatten().copied().collect();
    all.sort_unstable();
    for l in &mut latencies {
        l.sort_unstable();
    }

    println!();
    println!(
        "calls {}  pps/direction/call {}  seconds {:.1} (sending took {:.2?}; late ticks {}/{})",
        calls.len(),
        config.pps,
        config.seconds,
        send_wall,
        late_ticks,
        total_ticks
    );
    for (d, name) in ["phone->callee", "callee->phone"].iter().enumerate() {
        let lost = sent[d].saturating_sub(received[d]);
        println!(
            "  {name}: sent {}  received {}  lost {} ({:.3} %)  out-of-order {}  latency p50 {} us  p99 {} us  max {} us",
            sent[d],
            received[d],
            lost,
            100.0 * lost as f64 / sent[d].max(1) as f64,
            out_of_order[d],
            percentile(&latencies[d], 0.50),
            percentile(&latencies[d], 0.99),
            latencies[d].last().copied().unwrap_or(0),
        );
    }
    println!("  send errors (tool side): {send_errors}");
    let lost = total_sent.saturating_sub(total_received);
    if config.fail_on_loss && (lost > 0 || send_errors > 0) {
        return Err(format!(
            "{lost} packets lost and {send_errors} not sent through {server} (--fail-on-loss)"
        ));
    }
    println!(
        "packets sent {}  relayed (received) {}  lost {} ({:.3} %)",
        total_sent,
        total_received,
        total_sent.saturating_sub(total_received),
        100.0 * total_sent.saturating_sub(total_received) as f64 / total_sent.max(1) as f64
    );
    println!(
        "latency (both directions) p50 {} us  p99 {} us  p99.9 {} us  max {} us",
        percentile(&all, 0.50),
        percentile(&all, 0.99),
        percentile(&all, 0.999),
        all.last().copied().unwrap_or(0)
    );
    println!(
        "{server} CPU {:.2} s over {:.2?} wall ({:.0} % of one core)",
        cb_cpu,
        wall,
        100.0 * cb_cpu / wall.as_secs_f64()
    );
    println!(
        "{server}: PACKETS RELAYED PER CPU-SECOND: {:.0}",
        total_received as f64 / cb_cpu.max(0.01)
    );
    println!(
        "tool CPU {:.2} s ({:.0} % of one core); loadavg before [{load0}] after [{load1}]",
        tool_cpu,
        100.0 * tool_cpu / wall.as_secs_f64()
    );
    Ok(())
}

/// An RTP packet: V=2, PT 0 (PCMU), seq, timestamp seq·160, ssrc; payload starts with the send
/// time (ns since `base`, big-endian u64) and the call index.
fn fill_rtp(packet: &mut [u8; RTP_HEADER + PAYLOAD], seq: u16, ssrc: u32, sent_ns: u64) {
    packet[0] = 0x80;
    packet[1] = 0x00;
    packet[2..4].copy_from_slice(&seq.to_be_bytes());
    packet[4..8].copy_from_slice(&(u32::from(seq).wrapping_mul(160)).to_be_bytes());
    packet[8..12].copy_from_slice(&ssrc.to_be_bytes());
    packet[12..20].copy_from_slice(&sent_ns.to_be_bytes());
}

/// What one receiving socket saw.
struct RecvStats {
    /// 0: phone → callee (received on the callee socket); 1: callee → phone.
    direction: usize,
    received: u64,
    /// Packets whose sequence number was not above the last one seen (reordering/duplicates).
    out_of_order: u64,
    latencies_us: Vec<u32>,
}

impl RecvStats {
    fn new(direction: usize, expected: usize) -> RecvStats {
        RecvStats {
            direction,
            received: 0,
            out_of_order: 0,
            latencies_us: Vec::with_capacity(expected),
        }
    }

    /// Counts one datagram received at `now_ns` (since `base`); too short for a packet of
    /// [`fill_rtp`]'s: ignored.
    fn record(&mut self, packet: &[u8], now_ns: u64, last_seq: &mut Option<u16>) {
        if packet.len() < RTP_HEADER + 8 {
            return;
        }
        self.received += 1;
        let seq = u16::from_be_bytes([packet[2], packet[3]]);
        if let Some(last) = *last_seq {
            if seq.wrapping_sub(last) == 0 || seq.wrapping_sub(last) > 0x8000 {
                self.out_of_order += 1;
            }
        }
        *last_seq = Some(seq);
        let mut sent = [0u8; 8];
        sent.copy_from_slice(&packet[12..20]);
        let sent_ns = u64::from_be_bytes(sent);
        let us = now_ns.saturating_sub(sent_ns) / 1000;
        self.latencies_us.push(us.min(u64::from(u32::MAX)) as u32);
    }
}

async fn receive(
    socket: Arc<UdpSocket>,
    direction: usize,
    base: Instant,
    mut stop: tokio::sync::watch::Receiver<bool>,
    expected: usize,
) -> RecvStats {
    let mut stats = RecvStats::new(direction, expected);
    let mut buf = [0u8; 2048];
    let mut last_seq: Option<u16> = None;
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => return stats,
            got = socket.recv_from(&mut buf) => {
                let Ok((len, _)) = got else { continue };
                let now = base.elapsed().as_nanos() as u64;
                stats.record(&buf[..len], now, &mut last_seq);
            }
        }
    }
}

/// The `p` quantile (0–1, nearest rank) of sorted values; 0 for none.
fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_are_counted_ordered_and_timed() {
        let mut packet = [0u8; RTP_HEADER + PAYLOAD];
        let mut stats = RecvStats::new(0, 4);
        let mut last = None;
        for (seq, sent_ns, now_ns) in [(1, 1_000, 251_000), (2, 2_000, 52_000), (2, 0, 0)] {
            fill_rtp(&mut packet, seq, 5, sent_ns);
            stats.record(&packet, now_ns, &mut last);
        }
        assert_eq!(&packet[..2], &[0x80, 0x00]);
        assert_eq!(&packet[8..12], &5u32.to_be_bytes());
        stats.record(&packet[..RTP_HEADER], 0, &mut last);
        assert_eq!(stats.received, 3);
        assert_eq!(stats.out_of_order, 1);
        assert_eq!(stats.latencies_us, vec![250, 50, 0]);
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let values: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&values, 0.5), 51);
        assert_eq!(percentile(&values, 0.99), 99);
        assert_eq!(percentile(&values, 1.0), 100);
        assert_eq!(percentile(&[], 0.5), 0);
    }
}
