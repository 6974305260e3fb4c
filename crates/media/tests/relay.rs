//! The driver over real loopback UDP: RTP and RTCP between two fake phones through a stream,
//! latching, drops, re-addressing, and the ports' life cycle (`open` on a busy port, `close`).

use std::hash::{BuildHasher, RandomState};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use media::{
    DriverConfig, LearningConfig, LearningMode, Leg, MediaDriver, OpenError, SignallingIps,
    StreamCounters,
};
use tokio::net::UdpSocket;
use tokio::runtime::Handle;
use tokio::time::timeout;

const LOCALHOST: Ipv4Addr = Ipv4Addr::LOCALHOST;
const WAIT: Duration = Duration::from_secs(5);
const KEY: u32 = 1;

/// Lowest relay port a test uses: clear of the well-known and most registered service ports.
const PORT_FLOOR: u32 = 10_000;

/// The kernel's ephemeral range (`/proc/sys/net/ipv4/ip_local_port_range`), Linux's default
/// when it cannot be read.
fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut parts = text.split_whitespace().map(|p| p.parse::<u16>().ok());
            Some((parts.next()??, parts.next()??))
        })
        .unwrap_or((32768, 60999))
}

/// `len` consecutive relay ports (`len` even, the first even: RTP/RTCP pairs), free on
/// loopback when checked and never handed out before in this process. They lie below the
/// ephemeral range, where no socket bound to port 0 (in this test or any other process) can
/// take one between the check and the relay's bind, and start at a random offset so that two
/// test processes at once rarely probe the same ports. A copy of the helper in
/// `crates/b2bua/tests/media_relay.rs` (from `sip-tests/src/ports.rs`, which media cannot
/// depend on).
fn port_range(len: u16) -> (u16, u16) {
    assert!(
        len >= 2 && len.is_multiple_of(2),
        "relay ranges come in RTP/RTCP pairs"
    );
    // Where the next range starts: 0 until the first call seeds it.
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ceiling = u32::from(ephemeral_range().0);
    let span = ceiling.saturating_sub(PORT_FLOOR);
    let len = u32::from(len);
    assert!(span >= len, "no room below the ephemeral range");
    // std's hasher keys are random per process: a random number without a dependency.
    let random = RandomState::new().hash_one(std::process::id());
    let offset = (random % u64::from(span / 2)) as u32 * 2;
    let _ = NEXT.compare_exchange(0, PORT_FLOOR + offset, Ordering::Relaxed, Ordering::Relaxed);
    let mut tried = 0;
    while tried < span {
        let mut first = NEXT.fetch_add(len, Ordering::Relaxed);
        if first + len > ceiling {
            // Wrap to the floor: the ranges of this process start over from the bottom.
            first = PORT_FLOOR;
            NEXT.store(PORT_FLOOR + len, Ordering::Relaxed);
        }
        tried += len;
        let (first, last) = (first as u16, (first + len - 1) as u16);
        if (first..=last).all(|p| StdUdpSocket::bind((LOCALHOST, p)).is_ok()) {
            return (first, last);
        }
    }
    panic!("no free range of {len} UDP ports below the ephemeral range");
}

#[test]
fn port_ranges_are_even_below_the_ephemeral_range_and_distinct() {
    let ceiling = u32::from(ephemeral_range().0);
    let ranges = [port_range(20), port_range(100), port_range(6)];
    for (i, &(first, last)) in ranges.iter().enumerate() {
        assert_eq!(first % 2, 0, "{first}-{last}");
        assert!(
            u32::from(first) >= PORT_FLOOR && u32::from(last) < ceiling,
            "{first}-{last}"
        );
        for &(other_first, other_last) in &ranges[i + 1..] {
            assert!(
                last < other_first || other_last < first,
                "{ranges:?} overlap"
            );
        }
    }
}

fn driver() -> MediaDriver<u32> {
    let config = DriverConfig {
        bind_ip: LOCALHOST.into(),
        ..DriverConfig::default()
    };
    MediaDriver::new(config, Handle::current())
}

/// A phone's media end: RTP and RTCP sockets on ephemeral loopback ports.
struct Phone {
    rtp: UdpSocket,
    rtcp: UdpSocket,
}

impl Phone {
    async fn new() -> Phone {
        Phone {
            rtp: UdpSocket::bind((LOCALHOST, 0)).await.unwrap(),
            rtcp: UdpSocket::bind((LOCALHOST, 0)).await.unwrap(),
        }
    }

    fn rtp_addr(&self) -> SocketAddr {
        self.rtp.local_addr().unwrap()
    }

    fn rtcp_addr(&self) -> SocketAddr {
        self.rtcp.local_addr().unwrap()
    }
}

fn rtp_packet(seq: u16, fill: u8) -> Vec<u8> {
    let mut packet = vec![0x80, 0x00];
    packet.extend_from_slice(&seq.to_be_bytes());
    packet.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    packet.extend_from_slice(&0x1234_5678u32.to_be_bytes());
    packet.extend((0..160).map(|i| fill.wrapping_add(i as u8).wrapping_mul(seq as u8 | 1)));
    packet
}

fn rtcp_packet(fill: u8) -> Vec<u8> {
    // A receiver report with no report blocks, then some SDES-ish bytes.
    vec![0x80, 201, 0, 1, 0xca, 0xfe, 0xba, fill, 0x81, 202, 0, 0]
}

async fn recv(socket: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buffer = vec![0; 8192];
    let (len, from) = timeout(WAIT, socket.recv_from(&mut buffer))
        .await
        .expect("packet relayed in time")
        .unwrap();
    buffer.truncate(len);
    (buffer, from)
}

/// Polls the stream's counters until `condition` holds.
async fn counters_until(
    driver: &MediaDriver<u32>,
    condition: impl Fn(&StreamCounters) -> bool,
) -> StreamCounters {
    let result = timeout(WAIT, async {
        loop {
            let counters = driver.counters(KEY).expect("stream open");
            if condition(&counters) {
                return counters;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    result.unwrap_or_else(|_| panic!("counters never matched: {:?}", driver.counters(KEY)))
}

/// One open stream between two phones whose SDP addresses are set.
struct Call {
    driver: MediaDriver<u32>,
    a: Phone,
    b: Phone,
    /// Where A sends (A-facing RTP, RTCP).
    to_a_side: (SocketAddr, SocketAddr),
    /// Where B sends.
    to_b_side: (SocketAddr, SocketAddr),
}

async fn call() -> Call {
    let mut driver = driver();
    let (first, _) = port_range(4);
    driver
        .open(KEY, first, first + 2, SignallingIps::default())
        .unwrap();
    let (a, b) = (Phone::new().await, Phone::new().await);
    assert!(driver.set_remote(KEY, Leg::A, Some(a.rtp_addr()), Some(a.rtcp_addr())));
    assert!(driver.set_remote(KEY, Leg::B, Some(b.rtp_addr()), Some(b.rtcp_addr())));
    let side = |port: u16| {
        (
            SocketAddr::from((LOCALHOST, port)),
            SocketAddr::from((LOCALHOST, port + 1)),
        )
    };
    Call {
        driver,
        a,
        b,
        to_a_side: side(first),
        to_b_side: side(first + 2),
    }
}

fn bindable(port: u16) -> bool {
    StdUdpSocket::bind((LOCALHOST, port)).is_ok()
}

#[tokio::test]
async fn relays_rtp_both_ways_untouched() {
    let c = call().await;
    let before = Instant::now();
    for seq in 0..50u16 {
        let packet = rtp_packet(seq, 1);
        c.a.rtp.send_to(&packet, c.to_a_side.0).await.unwrap();
        let (got, from) = recv(&c.b.rtp).await;
        assert_eq!(got, packet);
        assert_eq!(from, c.to_b_side.0, "B hears from where it sends to");
        let packet = rtp_packet(seq, 2);
        c.b.rtp.send_to(&packet, c.to_b_side.0).await.unwrap();
        let (got, from) = recv(&c.a.rtp).await;
        assert_eq!(got, packet);
        assert_eq!(from, c.to_a_side.0);
    }
    let counters = counters_until(&c.driver, |s| {
        s.a_to_b.packets == 50 && s.b_to_a.packets == 50
    })
    .await;
    let bytes = 50 * rtp_packet(0, 0).len() as u64;
    assert_eq!(
        (counters.a_to_b.bytes, counters.b_to_a.bytes),
        (bytes, bytes)
    );
    assert_eq!((counters.a_to_b.dropped, counters.b_to_a.dropped), (0, 0));
    assert_eq!(counters.latched_a, Some(c.a.rtp_addr()));
    assert_eq!(counters.latched_b, Some(c.b.rtp_addr()));
    let last = counters.last_packet_at.expect("packets seen");
    assert!(before <= last && last <= Instant::now(), "{last:?}");
    let all: Vec<_> = c.driver.all_counters().collect();
    assert_eq!(all, [(KEY, counters)]);
    assert_eq!((c.driver.len(), c.driver.is_empty()), (1, false));
}

#[tokio::test]
async fn relays_rtcp_both_ways_and_drops_rtp_on_the_rtcp_port() {
    let c = call().await;
    for fill in 0..5 {
        let packet = rtcp_packet(fill);
        c.a.rtcp.send_to(&packet, c.to_a_side.1).await.unwrap();
        let (got, from) = recv(&c.b.rtcp).await;
        assert_eq!((got, from), (packet.clone(), c.to_b_side.1));
        c.b.rtcp.send_to(&packet, c.to_b_side.1).await.unwrap();
        let (got, from) = recv(&c.a.rtcp).await;
        assert_eq!((got, from), (packet, c.to_a_side.1));
    }
    // RTP sent to an RTCP port is not RTCP: dropped.
    c.a.rtcp
        .send_to(&rtp_packet(1, 1), c.to_a_side.1)
        .await
        .unwrap();
    let counters = counters_until(&c.driver, |s| s.a_to_b.dropped == 1).await;
    assert_eq!(counters.a_to_b.packets, 5);
    // RTCP latches nothing that is reported: only RTP sources are.
    assert_eq!((counters.latched_a, counters.latched_b), (None, None));
}

#[tokio::test]
async fn muxed_rtcp_on_the_rtp_port_goes_out_of_the_rtp_port() {
    let c = call().await;
    c.a.rtp
        .send_to(&rtcp_packet(3), c.to_a_side.0)
        .await
        .unwrap();
    let (got, from) = recv(&c.b.rtp).await;
    assert_eq!((got, from), (rtcp_packet(3), c.to_b_side.0));
    let counters = counters_until(&c.driver, |s| s.a_to_b.packets == 1).await;
    assert_eq!(counters.latched_a, None, "muxed RTCP does not latch");
}

#[tokio::test]
async fn latches_to_the_source_actually_used() {
    let c = call().await;
    // Before A sends anything, B's media goes where A's SDP said.
    c.b.rtp
        .send_to(&rtp_packet(1, 9), c.to_b_side.0)
        .await
        .unwrap();
    assert_eq!(recv(&c.a.rtp).await.0, rtp_packet(1, 9));
    // A sends from another port (a NAT mapping): the relay latches to it.
    let natted = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
    natted
        .send_to(&rtp_packet(2, 3), c.to_a_side.0)
        .await
        .unwrap();
    assert_eq!(recv(&c.b.rtp).await.0, rtp_packet(2, 3));
    let counters = counters_until(&c.driver, |s| s.latched_a.is_some()).await;
    assert_eq!(counters.latched_a, Some(natted.local_addr().unwrap()));
    c.b.rtp
        .send_to(&rtp_packet(3, 9), c.to_b_side.0)
        .await
        .unwrap();
    let (got, from) = recv(&natted).await;
    assert_eq!((got, from), (rtp_packet(3, 9), c.to_a_side.0));
}

#[tokio::test]
async fn stray_source_cannot_hijack_after_latching() {
    let c = call().await;
    c.a.rtp
        .send_to(&rtp_packet(1, 1), c.to_a_side.0)
        .await
        .unwrap();
    assert_eq!(recv(&c.b.rtp).await.0, rtp_packet(1, 1));
    let stray = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
    stray
        .send_to(&rtp_packet(99, 99), c.to_a_side.0)
        .await
        .unwrap();
    c.a.rtp
        .send_to(&rtp_packet(2, 1), c.to_a_side.0)
        .await
        .unwrap();
    // B gets A's next packet, not the stray one.
    assert_eq!(recv(&c.b.rtp).await.0, rtp_packet(2, 1));
    counters_until(&c.driver, |s| {
        s.a_to_b.dropped == 1 && s.a_to_b.packets == 2
    })
    .await;
    // B's media still goes to A, not to the stray source.
    c.b.rtp
        .send_to(&rtp_packet(3, 2), c.to_b_side.0)
        .await
        .unwrap();
    assert_eq!(recv(&c.a.rtp).await.0, rtp_packet(3, 2));
    assert_eq!(
        c.driver.counters(KEY).unwrap().latched_a,
        Some(c.a.rtp_addr())
    );
}

#[tokio::test]
async fn garbage_and_truncated_datagrams_are_dropped_and_counted() {
    let c = call().await;
    for garbage in [
        &b"hello"[..],
        b"GET / HTTP/1.1\r\n\r\n",
        &[0u8; 40],
        &[0x40; 20],
    ] {
        c.b.rtp.send_to(garbage, c.to_b_side.0).await.unwrap();
    }
    // Valid RTP headers, but filling the relay's 4 KiB buffer (or more): maybe cut short.
    for len in [4096, 6000] {
        let mut big = rtp_packet(5, 5);
        big.resize(len, 0xd5);
        c.b.rtp.send_to(&big, c.to_b_side.0).await.unwrap();
    }
    let mut largest = rtp_packet(6, 6);
    largest.resize(4095, 0xd5);
    c.b.rtp.send_to(&largest, c.to_b_side.0).await.unwrap();
    assert_eq!(recv(&c.a.rtp).await.0, largest, "4095 bytes are relayed");
    c.b.rtp
        .send_to(&rtp_packet(7, 7), c.to_b_side.0)
        .await
        .unwrap();
    assert_eq!(recv(&c.a.rtp).await.0, rtp_packet(7, 7));
    let counters = counters_until(&c.driver, |s| {
        s.b_to_a.dropped == 6 && s.b_to_a.packets == 2
    })
    .await;
    // Garbage did not latch anything: B is latched to its real RTP source.
    assert_eq!(counters.latched_b, Some(c.b.rtp_addr()));
}

#[tokio::test]
async fn set_remote_forgets_the_latch_and_the_new_address_latches() {
    let mut c = call().await;
    c.a.rtp
        .send_to(&rtp_packet(1, 1), c.to_a_side.0)
        .await
        .unwrap();
    recv(&c.b.rtp).await;
    counters_until(&c.driver, |s| s.latched_a.is_some()).await;
    // The same addresses again: nothing changes.
    assert!(c
        .driver
        .set_remote(KEY, Leg::A, Some(c.a.rtp_addr()), Some(c.a.rtcp_addr())));
    assert_eq!(
        c.driver.counters(KEY).unwrap().latched_a,
        Some(c.a.rtp_addr())
    );
    // A re-INVITE from A with a new media address.
    let moved = Phone::new().await;
    assert!(c
        .driver
        .set_remote(KEY, Leg::A, Some(moved.rtp_addr()), Some(moved.rtcp_addr())));
    assert_eq!(c.driver.counters(KEY).unwrap().latched_a, None, "at once");
    // The old latch is gone: B's media follows the new SDP address.
    c.b.rtp
        .send_to(&rtp_packet(2, 2), c.to_b_side.0)
        .await
        .unwrap();
    assert_eq!(recv(&moved.rtp).await.0, rtp_packet(2, 2));
    // And A's new source latches.
    moved
        .rtp
        .send_to(&rtp_packet(3, 3), c.to_a_side.0)
        .await
        .unwrap();
    assert_eq!(recv(&c.b.rtp).await.0, rtp_packet(3, 3));
    counters_until(&c.driver, |s| s.latched_a == Some(moved.rtp_addr())).await;
    // The old source is foreign now.
    c.a.rtp
        .send_to(&rtp_packet(4, 4), c.to_a_side.0)
        .await
        .unwrap();
    counters_until(&c.driver, |s| s.a_to_b.dropped == 1).await;
    assert!(
        !c.driver.set_remote(KEY + 1, Leg::A, None, None),
        "unknown key"
    );
}

#[tokio::test]
async fn nothing_is_forwarded_towards_a_leg_without_an_address() {
    let mut driver = driver();
    let (first, _) = port_range(4);
    // No SDP from either leg, but both signal from loopback: the phones' media is learned
    // from their signalling IP.
    let loopback = SignallingIps {
        a: Some(LOCALHOST.into()),
        b: Some(LOCALHOST.into()),
    };
    driver.open(KEY, first, first + 2, loopback).unwrap();
    let a = Phone::new().await;
    a.rtp
        .send_to(&rtp_packet(1, 1), (LOCALHOST, first))
        .await
        .unwrap();
    let counters = counters_until(&driver, |s| s.a_to_b.dropped == 1).await;
    // It latched leg A, though: B's first packet goes back to A.
    assert_eq!(counters.latched_a, Some(a.rtp_addr()));
    assert!(counters.last_packet_at.is_some());
    let b = Phone::new().await;
    b.rtp
        .send_to(&rtp_packet(1, 2), (LOCALHOST, first + 2))
        .await
        .unwrap();
    assert_eq!(
        recv(&a.rtp).await,
        (rtp_packet(1, 2), SocketAddr::from((LOCALHOST, first)))
    );
}

/// The engine gives a stream's ports back to its pool when it emits Close: the next `open` may
/// bind them at once.
#[tokio::test]
async fn close_frees_the_ports_before_it_returns() {
    let mut c = call().await;
    c.a.rtp
        .send_to(&rtp_packet(1, 1), c.to_a_side.0)
        .await
        .unwrap();
    recv(&c.b.rtp).await;
    let ports = [c.to_a_side.0, c.to_a_side.1, c.to_b_side.0, c.to_b_side.1].map(|a| a.port());
    assert!(ports.iter().all(|&p| !bindable(p)));
    // No await between the two: the relay task has not run since.
    assert!(c.driver.close(KEY));
    assert!(ports.iter().all(|&p| bindable(p)), "ports free at once");
    assert!(!c.driver.close(KEY));
    assert_eq!(c.driver.counters(KEY), None);
    assert!(c.driver.is_empty());
    // And the same key and ports open again.
    c.driver
        .open(KEY, ports[0], ports[2], SignallingIps::default())
        .unwrap();
    assert!(c
        .driver
        .set_remote(KEY, Leg::A, Some(c.a.rtp_addr()), Some(c.a.rtcp_addr())));
    c.a.rtp
        .send_to(&rtp_packet(2, 2), c.to_a_side.0)
        .await
        .unwrap();
    counters_until(&c.driver, |s| s.latched_a == Some(c.a.rtp_addr())).await;
}

/// `close` from another thread than the one relaying, while the relay is busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_frees_the_ports_while_the_relay_is_busy() {
    let mut driver = driver();
    for round in 0..20 {
        let (first, _) = port_range(4);
        // The flood's source is learned at once: it is on leg A's signalling IP.
        let signalling = SignallingIps {
            a: Some(LOCALHOST.into()),
            b: None,
        };
        driver.open(round, first, first + 2, signalling).unwrap();
        let b = StdUdpSocket::bind((LOCALHOST, 0)).unwrap();
        driver.set_remote(round, Leg::B, Some(b.local_addr().unwrap()), None);
        let stop = Arc::new(AtomicBool::new(false));
        let flood = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let a = StdUdpSocket::bind((LOCALHOST, 0)).unwrap();
                let packet = rtp_packet(1, 1);
                while !stop.load(Ordering::Relaxed) {
                    let _ = a.send_to(&packet, (LOCALHOST, first));
                }
            })
        };
        let busy = timeout(WAIT, async {
            while driver.counters(round).unwrap().a_to_b.packets < 200 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await;
        assert!(busy.is_ok(), "relaying: {:?}", driver.counters(round));
        assert!(driver.close(round));
        for port in first..first + 4 {
            assert!(bindable(port), "round {round}: port {port} still bound");
        }
        stop.store(true, Ordering::Relaxed);
        flood.join().unwrap();
    }
    assert!(driver.is_empty());
}

#[tokio::test]
async fn dropping_the_driver_closes_every_stream() {
    let mut driver = driver();
    let (first, last) = port_range(8);
    driver
        .open(1, first, first + 2, SignallingIps::default())
        .unwrap();
    driver
        .open(2, first + 4, first + 6, SignallingIps::default())
        .unwrap();
    assert_eq!(driver.len(), 2);
    assert!((first..=last).all(|p| !bindable(p)));
    drop(driver);
    assert!((first..=last).all(bindable));
}

#[tokio::test]
async fn open_on_a_busy_port_fails_and_leaves_nothing_bound() {
    let mut driver = driver();
    let (first, last) = port_range(4);
    // Each of the four ports in turn is held by someone else.
    for busy_port in first..=last {
        let busy = StdUdpSocket::bind((LOCALHOST, busy_port)).unwrap();
        match driver.open(KEY, first, first + 2, SignallingIps::default()) {
            Err(OpenError::Bind { port, source }) => {
                assert_eq!(port, busy_port);
                assert_eq!(source.kind(), std::io::ErrorKind::AddrInUse);
            }
            other => panic!("{other:?}"),
        }
        assert!(driver.is_empty());
        drop(busy);
        assert!(
            (first..=last).all(bindable),
            "busy {busy_port}: a port stayed bound"
        );
    }
    // A stream's own ports overlap: its second pair cannot be bound either.
    assert!(matches!(
        driver.open(KEY, first, first + 1, SignallingIps::default()),
        Err(OpenError::Bind { port, .. }) if port == first + 1
    ));
    assert!((first..=last).all(bindable));
    // No RTCP port above 65535.
    assert!(matches!(
        driver.open(KEY, first, u16::MAX, SignallingIps::default()),
        Err(OpenError::Bind { port: u16::MAX, .. })
    ));
    assert!((first..=last).all(bindable));
    // Free again: it opens, and a second open of the key is refused without binding.
    driver
        .open(KEY, first, first + 2, SignallingIps::default())
        .unwrap();
    assert!(matches!(
        driver.open(KEY, first + 100, first + 102, SignallingIps::default()),
        Err(OpenError::AlreadyOpen)
    ));
    assert_eq!(driver.len(), 1);
}

#[tokio::test]
async fn the_probe_names_exactly_the_ports_another_socket_holds() {
    let (first, last) = port_range(8);
    let driver = driver();
    assert!(driver.unbindable_ports(first, last).is_empty());
    let held = std::net::UdpSocket::bind((std::net::Ipv4Addr::LOCALHOST, first + 3)).unwrap();
    assert_eq!(driver.unbindable_ports(first, last), [first + 3]);
    drop(held);
    // The probe itself holds nothing afterwards.
    assert!((first..=last).all(bindable));
}

#[tokio::test]
async fn the_probe_takes_a_range_reaching_the_last_port() {
    // Only checks that the arithmetic holds at the top of the port space (no overflow panic).
    let driver = driver();
    let busy = driver.unbindable_ports(65534, 65535);
    assert!(busy.len() <= 2);
    assert!(
        driver.unbindable_ports(65535, 65535).is_empty(),
        "no pair fits"
    );
}

/// Issue 10: someone spraying valid RTP and RTCP at every port of a stream from before the
/// phones speak (127.0.0.66, neither leg's SDP nor signalling IP) is never relayed and never
/// sent anything; the phones, sending from their SDP addresses, are learned and hear only
/// each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sprayer_during_set_up_neither_hears_nor_is_heard() {
    let config = DriverConfig {
        bind_ip: LOCALHOST.into(),
        learning: LearningConfig {
            mode: LearningMode::Heuristic,
            // Longer than the test: the fallback must not be what decides it.
            window: Duration::from_secs(600),
        },
        ..DriverConfig::default()
    };
    let mut driver = MediaDriver::new(config, Handle::current());
    let (first, last) = port_range(4);
    let loopback = SignallingIps {
        a: Some(LOCALHOST.into()),
        b: Some(LOCALHOST.into()),
    };
    driver.open(KEY, first, first + 2, loopback).unwrap();
    let (a, b) = (Phone::new().await, Phone::new().await);
    driver.set_remote(KEY, Leg::A, Some(a.rtp_addr()), Some(a.rtcp_addr()));
    driver.set_remote(KEY, Leg::B, Some(b.rtp_addr()), Some(b.rtcp_addr()));

    let attacker = StdUdpSocket::bind((Ipv4Addr::new(127, 0, 0, 66), 0)).unwrap();
    attacker.set_nonblocking(true).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let spray = {
        let (attacker, stop) = (attacker.try_clone().unwrap(), stop.clone());
        std::thread::spawn(move || {
            let (rtp, rtcp) = (rtp_packet(666, 0x66), rtcp_packet(0x66));
            while !stop.load(Ordering::Relaxed) {
                for port in first..=last {
                    let packet = if port % 2 == 0 { &rtp } else { &rtcp };
                    let _ = attacker.send_to(packet, (LOCALHOST, port));
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        })
    };
    // The spray reaches all four sockets before the phones speak: dropped for its source.
    counters_until(&driver, |s| s.a_to_b.foreign > 10 && s.b_to_a.foreign > 10).await;

    const ROUNDS: u16 = 50;
    let (to_a_side, to_b_side) = (
        SocketAddr::from((LOCALHOST, first)),
        SocketAddr::from((LOCALHOST, first + 2)),
    );
    for seq in 0..ROUNDS {
        a.rtp.send_to(&rtp_packet(seq, 1), to_a_side).await.unwrap();
        assert_eq!(
            recv(&b.rtp).await,
            (rtp_packet(seq, 1), to_b_side),
            "B hears A"
        );
        b.rtp.send_to(&rtp_packet(seq, 2), to_b_side).await.unwrap();
        assert_eq!(
            recv(&a.rtp).await,
            (rtp_packet(seq, 2), to_a_side),
            "A hears B"
        );
        let rtcp = |port: u16| SocketAddr::from((LOCALHOST, port + 1));
        a.rtcp.send_to(&rtcp_packet(1), rtcp(first)).await.unwrap();
        assert_eq!(recv(&b.rtcp).await, (rtcp_packet(1), rtcp(first + 2)));
        b.rtcp
            .send_to(&rtcp_packet(2), rtcp(first + 2))
            .await
            .unwrap();
        assert_eq!(recv(&a.rtcp).await, (rtcp_packet(2), rtcp(first)));
    }
    stop.store(true, Ordering::Relaxed);
    spray.join().unwrap();
    let counters = counters_until(&driver, |s| {
        s.a_to_b.packets == 2 * u64::from(ROUNDS) && s.b_to_a.packets == 2 * u64::from(ROUNDS)
    })
    .await;
    assert_eq!(counters.latched_a, Some(a.rtp_addr()));
    assert_eq!(counters.latched_b, Some(b.rtp_addr()));
    // Every relayed packet is accounted for by what the phones received in order, so none
    // went to the attacker; and its socket indeed holds nothing.
    let mut buffer = [0u8; 2048];
    match attacker.recv_from(&mut buffer) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the attacker received {other:?}"),
    }
    // Nothing of the attacker's is still on its way to a phone either.
    for socket in [&a.rtp, &a.rtcp, &b.rtp, &b.rtcp] {
        match socket.try_recv_from(&mut buffer) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("a phone received more: {other:?}"),
        }
    }
    // Every drop was the attacker's, refused for its source.
    for direction in [counters.a_to_b, counters.b_to_a] {
        assert_eq!(direction.dropped, direction.foreign, "{counters:?}");
    }
}
