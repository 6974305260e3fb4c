//! Media anchoring over real loopback UDP: SDP through an `AnchoredMedia` session, then RTP and
//! RTCP between two fake phones through the relay.

use std::hash::{BuildHasher, RandomState};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use b2bua::media::sdp::SessionDescription;
use b2bua::media::{
    AnchoredMedia, MediaConfig, MediaError, MediaFactory, MediaNotice, MediaNoticeKind,
    MediaSession, MediaStats,
};
use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::timeout;

const LOCALHOST: Ipv4Addr = Ipv4Addr::LOCALHOST;
const WAIT: Duration = Duration::from_secs(5);

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
/// test processes at once rarely probe the same ports. A small copy of
/// `sip-tests/src/ports.rs`, which b2bua cannot depend on.
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

fn factory(
    len: u16,
    inactivity: Duration,
) -> (AnchoredMedia, mpsc::UnboundedReceiver<MediaNotice>) {
    let (first_port, last_port) = port_range(len);
    let (tx, rx) = mpsc::unbounded_channel();
    let config = MediaConfig {
        public_ip: LOCALHOST.into(),
        bind_ip: LOCALHOST.into(),
        first_port,
        last_port,
        inactivity,
    };
    (AnchoredMedia::new(config, tx), rx)
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

    fn sdp(&self, version: u32) -> Bytes {
        sdp_for(
            self.rtp.local_addr().unwrap(),
            self.rtcp.local_addr().unwrap(),
            version,
        )
    }
}

fn sdp_for(rtp: SocketAddr, rtcp: SocketAddr, version: u32) -> Bytes {
    Bytes::from(format!(
        "v=0\r\no=- 1000 {version} IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
m=audio {port} RTP/AVP 0 101\r\na=rtcp:{rtcp_port}\r\na=rtpmap:101 telephone-event/8000\r\n\
a=sendrecv\r\n",
        ip = rtp.ip(),
        port = rtp.port(),
        rtcp_port = rtcp.port(),
    ))
}

/// The relay's (RTP, RTCP) addresses as written in a rewritten SDP.
fn relay_addrs(sdp: &Bytes) -> (SocketAddr, SocketAddr) {
    let stream = SessionDescription::parse(sdp).unwrap().streams().remove(0);
    (stream.rtp.unwrap(), stream.rtcp.unwrap())
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
    let mut buffer = vec![0; 2048];
    let (len, from) = timeout(WAIT, socket.recv_from(&mut buffer))
        .await
        .expect("packet relayed in time")
        .unwrap();
    buffer.truncate(len);
    (buffer, from)
}

/// Polls `condition` on the session's stats until it holds.
async fn stats_until(session: &dyn MediaSession, condition: impl Fn(&MediaStats) -> bool) {
    let result = timeout(WAIT, async {
        while !condition(&session.stats()) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(result.is_ok(), "stats never matched: {:?}", session.stats());
}

struct Call {
    session: Box<dyn MediaSession>,
    a: Phone,
    b: Phone,
    /// Where A sends (A-facing RTP, RTCP), from the SDP sent to A.
    to_a_side: (SocketAddr, SocketAddr),
    /// Where B sends, from the SDP sent to B.
    to_b_side: (SocketAddr, SocketAddr),
}

async fn call(factory: &AnchoredMedia) -> Call {
    let mut session = factory.new_session("call-1").unwrap();
    let (a, b) = (Phone::new().await, Phone::new().await);
    let offer = session.towards_b(&a.sdp(1)).unwrap();
    let answer = session.towards_a(&b.sdp(1)).unwrap();
    Call {
        session,
        to_b_side: relay_addrs(&offer),
        to_a_side: relay_addrs(&answer),
        a,
        b,
    }
}

#[tokio::test]
async fn media_offer_answer_relays_rtp_both_ways_untouched() {
    let (factory, _notices) = factory(20, Duration::ZERO);
    let (first, last) = factory.pool().range();
    let c = call(&factory).await;
    for (side, other) in [(c.to_a_side, c.to_b_side), (c.to_b_side, c.to_a_side)] {
        assert_eq!(side.0.ip(), LOCALHOST);
        assert!((first..=last).contains(&side.0.port()) && side.0.port() % 2 == 0);
        assert_eq!(side.1.port(), side.0.port() + 1);
        assert_ne!(side.0, other.0);
    }
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
    let bytes = 50 * rtp_packet(0, 0).len() as u64;
    stats_until(&*c.session, |s| {
        s.a_to_b.packets == 50 && s.b_to_a.packets == 50
    })
    .await;
    let stats = c.session.stats();
    assert_eq!((stats.a_to_b.bytes, stats.b_to_a.bytes), (bytes, bytes));
    assert_eq!((stats.a_to_b.dropped, stats.b_to_a.dropped), (0, 0));
    assert_eq!(stats.latched_a, Some(c.a.rtp.local_addr().unwrap()));
    assert_eq!(stats.latched_b, Some(c.b.rtp.local_addr().unwrap()));
    assert_eq!(stats.streams, 1);
    // The stats are what the API shows.
    let json = serde_json::to_value(&stats).unwrap();
    assert_eq!(json["a_to_b"]["packets"], 50);
    assert_eq!(json["latched_b"], c.b.rtp.local_addr().unwrap().to_string());
}

#[tokio::test]
async fn media_sdp_rewrite_keeps_codecs_and_direction() {
    let (factory, _notices) = factory(20, Duration::ZERO);
    let c = call(&factory).await;
    let mut session = c.session;
    let offer = session.towards_b(&c.a.sdp(2)).unwrap();
    let text = String::from_utf8(offer.to_vec()).unwrap();
    assert!(text.contains("c=IN IP4 127.0.0.1\r\n"));
    assert!(text.contains(&format!(
        "m=audio {} RTP/AVP 0 101\r\n",
        c.to_b_side.0.port()
    )));
    assert!(text.contains(&format!("a=rtcp:{}\r\n", c.to_b_side.1.port())));
    assert!(text.contains("a=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"));
    assert!(text.contains("o=- 1000 3 IN IP4"));
}

#[tokio::test]
async fn media_rtcp_relayed_both_ways() {
    let (factory, _notices) = factory(20, Duration::ZERO);
    let c = call(&factory).await;
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
    stats_until(&*c.session, |s| s.a_to_b.dropped == 1).await;
    assert_eq!(c.session.stats().a_to_b.packets, 5);
}

#[tokio::test]
async fn media_latches_to_the_source_actually_used() {
    let (factory, _notices) = factory(20, Duration::ZERO);
    let c = call(&factory).await;
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
    stats_until(&*c.session, |s| s.latched_a.is_some()).await;
    assert_eq!(
        c.session.stats().latched_a,
        Some(natted.local_addr().unwrap())
    );
    c.b.rtp
        .send_to(&rtp_packet(3, 9), c.to_b_side.0)
        .await
        .unwrap();
    let (got, from) = recv(&natted).await;
    assert_eq!((got, from), (rtp_packet(3, 9), c.to_a_side.0));
}

#[tokio::test]
async fn media_stray_source_cannot_hijack_after_latching() {
    let (factory, _notices) = factory(20, Duration::ZERO);
    let c = call(&factory).await;
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
    stats_until(&*c.session, |s| {
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
        c.session.stats().latched_a,
        Some(c.a.rtp.local_addr().unwrap())
    );
}

#[tokio::test]
async fn media_non_rtp_garbage_is_dropped_and_counted() {
    let (factory, _notices) = factory(20, Duration::ZERO);
    let c = call(&factory).await;
    for garbage in [
        &b"hello"[..],
        b"GET / HTTP/1.1\r\n\r\n",
        &[0u8; 40],
        &[0x40; 20],
    ] {
        c.b.rtp.send_to(garbage, c.to_b_side.0).await.unwrap();
    }
    c.b.rtp
        .send_to(&rtp_packet(7, 7), c.to_b_side.0)
        .await
        .unwrap();
    assert_eq!(recv(&c.a.rtp).await.0, rtp_packet(7, 7));
    stats_until(&*c.session, |s| {
        s.b_to_a.dropped == 4 && s.b_to_a.packets == 1
    })
    .await;
    // Garbage did not latch anything: B is latched to its real RTP source.
    assert_eq!(
        c.session.stats().latched_b,
        Some(c.b.rtp.local_addr().unwrap())
    );
}

#[tokio::test]
async fn media_reoffer_reuses_ports_and_relatches_new_address() {
    let (factory, _notices) = factory(20, Duration::ZERO);
    let mut c = call(&factory).await;
    c.a.rtp
        .send_to(&rtp_packet(1, 1), c.to_a_side.0)
        .await
        .unwrap();
    recv(&c.b.rtp).await;
    // Re-INVITE from A with a new media address: same relay ports towards B.
    let moved = Phone::new().await;
    let reoffer = c.session.towards_b(&moved.sdp(2)).unwrap();
    assert_eq!(relay_addrs(&reoffer), c.to_b_side);
    let reanswer = c.session.towards_a(&c.b.sdp(2)).unwrap();
    assert_eq!(relay_addrs(&reanswer), c.to_a_side);
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
    stats_until(&*c.session, |s| {
        s.latched_a == Some(moved.rtp.local_addr().unwrap())
    })
    .await;
}

#[tokio::test]
async fn media_inactivity_notice_fires_once() {
    let (factory, mut notices) = factory(20, Duration::from_millis(200));
    let c = call(&factory).await;
    c.a.rtp
        .send_to(&rtp_packet(1, 1), c.to_a_side.0)
        .await
        .unwrap();
    recv(&c.b.rtp).await;
    let notice = timeout(WAIT, notices.recv())
        .await
        .expect("inactivity notice in time")
        .unwrap();
    assert_eq!(notice.callid, "call-1");
    assert_eq!(
        notice.kind,
        MediaNoticeKind::Inactive {
            idle: Duration::from_millis(200)
        }
    );
    assert!(c.session.stats().idle_ms.unwrap() >= 200);
    // Only once.
    assert!(timeout(Duration::from_millis(400), notices.recv())
        .await
        .is_err());
}

#[tokio::test]
async fn media_no_inactivity_notice_before_both_legs_have_sdp() {
    let (factory, mut notices) = factory(20, Duration::from_millis(100));
    let mut session = factory.new_session("early").unwrap();
    let a = Phone::new().await;
    session.towards_b(&a.sdp(1)).unwrap();
    assert!(timeout(Duration::from_millis(400), notices.recv())
        .await
        .is_err());
}

#[tokio::test]
async fn media_dropping_the_session_releases_the_ports() {
    let (factory, _notices) = factory(8, Duration::from_secs(60));
    let pool = factory.pool().clone();
    let c = call(&factory).await;
    assert_eq!(pool.available(), pool.capacity() - 2);
    let ports = [c.to_a_side.0, c.to_a_side.1, c.to_b_side.0, c.to_b_side.1];
    drop(c.session);
    let released = timeout(WAIT, async {
        while pool.available() != pool.capacity() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(released.is_ok(), "ports not returned to the pool");
    for port in ports {
        StdUdpSocket::bind(port).expect("port free again");
    }
}

#[tokio::test]
async fn media_too_many_streams_is_488_and_takes_no_port() {
    let (factory, _notices) = factory(100, Duration::ZERO);
    let pool = factory.pool().clone();
    let a = Phone::new().await;
    let one = String::from_utf8(a.sdp(1).to_vec()).unwrap();
    let audio = &one[one.find("m=").unwrap()..];
    let with_streams = |n: usize| Bytes::from(format!("{one}{}", audio.repeat(n - 1)));
    let mut session = factory.new_session("many").unwrap();
    let error = session
        .towards_b(&with_streams(b2bua::media::anchored::MAX_STREAMS + 1))
        .unwrap_err();
    assert!(matches!(error, MediaError::Malformed(_)) && error.sip_status() == 488);
    assert_eq!(pool.available(), pool.capacity());
    // The limit itself is relayed.
    session
        .towards_b(&with_streams(b2bua::media::anchored::MAX_STREAMS))
        .unwrap();
    assert_eq!(
        pool.available(),
        pool.capacity() - 2 * b2bua::media::anchored::MAX_STREAMS
    );
}

#[tokio::test]
async fn media_exhaustion_gives_exhausted_and_leaves_nothing_allocated() {
    // Three pairs: one call's stream takes two.
    let (factory, _notices) = factory(6, Duration::ZERO);
    let pool = factory.pool().clone();
    assert_eq!(pool.capacity(), 3);
    let a = Phone::new().await;

    // Two streams in one offer need four pairs: nothing is kept.
    let two_streams = {
        let one = String::from_utf8(a.sdp(1).to_vec()).unwrap();
        let audio = &one[one.find("m=").unwrap()..];
        Bytes::from(format!("{one}{}", audio.replace("audio", "video")))
    };
    let mut session = factory.new_session("big").unwrap();
    let error = session.towards_b(&two_streams).unwrap_err();
    assert_eq!(
        (error.clone(), error.sip_status()),
        (MediaError::Exhausted, 503)
    );
    assert_eq!(pool.available(), 3);
    assert_eq!(session.stats().streams, 0);

    let c = call(&factory).await;
    assert_eq!(pool.available(), 1);
    let mut second = factory.new_session("call-2").unwrap();
    assert_eq!(
        second.towards_b(&a.sdp(1)).unwrap_err(),
        MediaError::Exhausted
    );
    assert_eq!(pool.available(), 1);
    drop((c, second, session));
}

#[tokio::test]
async fn media_malformed_sdp_is_488() {
    let (factory, _notices) = factory(6, Duration::ZERO);
    let mut session = factory.new_session("bad").unwrap();
    let error = session
        .towards_b(&Bytes::from_static(
            b"v=0\r\nc=IN IP4 nowhere\r\nm=audio 1 RTP/AVP 0\r\n",
        ))
        .unwrap_err();
    assert_eq!(error.sip_status(), 488);
    assert_eq!(factory.pool().available(), 3);
}
