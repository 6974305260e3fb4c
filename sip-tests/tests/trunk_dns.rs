//! The trunk given as a domain (RFC 3263), against a real DNS server: dnsmasq
//! (sip-tests/src/dnsmasq.rs) serves `carrier.test` on loopback with NAPTR, SRV and A records.
//! callbridge's resolver follows NAPTR to SRV to A in priority order; a call whose first target
//! never answers reaches the second once Timer B fires, and bridges there; when the records
//! change, the targets follow once their TTL has expired, without a restart, and when they
//! vanish the last targets stay; a name that resolves to nothing stops the start.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use callbridge::config::Config;
use callbridge::trunk_dns::{
    AddressFamilies, Resolved, TrunkDnsError, TrunkName, TrunkResolver, MIN_REFRESH,
};
use sip_core::{HeaderName, Message, Method, Peer, Request, Response, Transport};
use sip_tests::bridge::{Bridge, CalleeDialog, Options, Phone};
use sip_tests::dnsmasq::{DnsRecords, Dnsmasq};
use sip_tests::TestUa;

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// `carrier.test`: NAPTR for UDP (and a preferred one for TCP, which a UDP trunk must
/// ignore) to `_sip._udp.carrier.test`, whose SRV records name `first` (priority 10) and
/// `second` (priority 20).
fn carrier_records(first: SocketAddr, second: SocketAddr) -> DnsRecords {
    DnsRecords::new("test")
        .ttl(1)
        .naptr("carrier.test", 10, 50, "SIP+D2T", "_sip._tcp.carrier.test")
        .naptr("carrier.test", 20, 50, "SIP+D2U", "_sip._udp.carrier.test")
        .srv(
            "_sip._udp.carrier.test",
            "b.carrier.test",
            second.port(),
            20,
            0,
        )
        .srv(
            "_sip._udp.carrier.test",
            "a.carrier.test",
            first.port(),
            10,
            0,
        )
        .host("a.carrier.test", first.ip())
        .host("b.carrier.test", second.ip())
}

/// callbridge with `trunk.address = "carrier.test"` resolved through `dns`, and `callee` (bound
/// on the address the records name) as its callee UA.
async fn bridge_via(dns: &Dnsmasq, mut callee: TestUa) -> Bridge {
    let mut bridge = Bridge::start_with(Options {
        extra: vec![
            "trunk.address=\"carrier.test\"".into(),
            format!("dns.servers=[\"{}\"]", dns.addr()),
        ],
        ..Options::default()
    })
    .await;
    callee.server = bridge.sip;
    bridge.callee = callee;
    bridge
}

/// `/healthz`'s `trunk_targets`.
async fn healthz_targets(bridge: &Bridge) -> Vec<String> {
    let (status, health) = bridge.http("GET", "/healthz", None).await;
    assert_eq!(status, 200, "{health}");
    health["trunk_targets"]
        .as_array()
        .unwrap_or_else(|| panic!("no trunk_targets in {health}"))
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect()
}

/// The next INVITE at `ua` within `wait` (other messages skipped), or a panic that says what
/// the DNS server saw.
async fn next_invite(ua: &mut TestUa, wait: Duration, dns: &Dnsmasq) -> Request {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match ua.try_recv(left).await {
            Some((Message::Request(request), _)) if request.method == Method::Invite => {
                return request
            }
            Some(_) => continue,
            None => panic!(
                "{}: no INVITE within {wait:?}; dnsmasq log:\n{}",
                ua.local_addr(),
                dns.log()
            ),
        }
    }
}

/// `response` with a Contact naming the callee's real address.
fn reachable(mut response: Response, callee: SocketAddr) -> Response {
    response
        .headers
        .set(HeaderName::Contact, format!("<sip:callee@{callee}>"));
    response
}

/// The next `method` request at the callee, past retransmissions of the INVITE.
async fn next_request(callee: &mut TestUa, method: Method) -> Request {
    loop {
        match callee.recv().await {
            (Message::Request(r), _) if r.method == method => return r,
            (Message::Request(r), _) if r.method == Method::Invite => continue,
            (Message::Request(r), _) => panic!("expected {method}, got {}", r.method),
            (Message::Response(_), _) => continue,
        }
    }
}

/// Leg B's INVITE at the bridge's callee is answered (180, 200 with SDP): the phone gets
/// both, the callee the ACK; then the phone hangs up and the BYE reaches the callee.
async fn answer_and_hang_up(
    bridge: &mut Bridge,
    phone: &mut Phone,
    invite: &Request,
    callid: &str,
) {
    let here = bridge.callee.local_addr();
    let dialog = CalleeDialog::new(invite.clone());
    bridge.callee.send(dialog.reply(invite, 100, None)).await;
    bridge
        .callee
        .send(reachable(dialog.reply(invite, 180, None), here))
        .await;
    let ringing = phone.ua.expect_response(180).await;
    phone.learn(&ringing);
    bridge
        .callee
        .send(reachable(dialog.reply(invite, 200, Some(here)), here))
        .await;
    let ok = phone.ua.expect_response(200).await;
    phone.learn(&ok);
    let ack = next_request(&mut bridge.callee, Method::Ack).await;
    assert_eq!(ack.headers.call_id(), invite.headers.call_id());
    phone.ack().await;
    bridge.wait_call_state(callid, "answered").await;

    let bye = phone.in_dialog(Method::Bye, None);
    phone.ua.send(bye).await;
    phone.ua.expect_response(200).await;
    let bye_b = next_request(&mut bridge.callee, Method::Bye).await;
    assert_eq!(bye_b.headers.call_id(), invite.headers.call_id());
    bridge.callee.send(dialog.reply(&bye_b, 200, None)).await;
    let record = bridge.wait_call_state(callid, "ended").await;
    assert_eq!(record["end_cause"], "hangup", "{record}");
    assert_eq!(record["leg_b_code"], 200, "{record}");
}

/// `name` (a UDP trunk's address) resolved by `resolver`.
async fn resolve(resolver: &TrunkResolver, name: &str) -> Result<Resolved, TrunkDnsError> {
    let name = TrunkName::parse(name, Transport::Udp).unwrap();
    resolver.resolve(&name).await
}

#[tokio::test]
async fn the_resolver_follows_naptr_srv_and_a_records_in_priority_order() {
    let first: SocketAddr = "127.0.0.2:5071".parse().unwrap();
    let second: SocketAddr = "127.0.0.3:5072".parse().unwrap();
    let records = carrier_records(first, second)
        .ttl(2)
        .srv("_sip._tcp.carrier.test", "t.carrier.test", 5073, 10, 0)
        .host("t.carrier.test", ip("127.0.0.4"))
        // SRV without NAPTR, and a name with only an address.
        .srv("_sip._udp.srvonly.test", "a.carrier.test", 6000, 1, 0)
        .host("plain.test", ip("127.0.0.5"));
    let dns = Dnsmasq::start(records).await;
    let resolver =
        |transport| TrunkResolver::new(&[dns.addr()], transport, AddressFamilies::V4).unwrap();
    let udp = resolver(Transport::Udp);

    // NAPTR (the UDP one, though the TCP one comes first) -> SRV 10 then 20 -> A.
    let resolved = resolve(&udp, "carrier.test").await.unwrap();
    assert_eq!(
        resolved,
        Resolved {
            targets: vec![Peer::udp(first), Peer::udp(second)],
            // TTL 2 s: re-resolved at the floor.
            refresh: Some(MIN_REFRESH),
        },
        "dnsmasq log:\n{}",
        dns.log()
    );
    let log = dns.log();
    for query in [
        "query[NAPTR] carrier.test",
        "query[SRV] _sip._udp.carrier.test",
        "query[A] a.carrier.test",
        "query[A] b.carrier.test",
    ] {
        assert!(log.contains(query), "{query} not asked:\n{log}");
    }
    assert!(!log.contains("_sip._tcp"), "UDP asked the TCP SRV:\n{log}");
    assert!(!log.contains("query[AAAA]"), "IPv4 SIP asked AAAA:\n{log}");

    // The TCP NAPTR for a TCP trunk.
    let tcp = resolver(Transport::Tcp);
    let name = TrunkName::parse("carrier.test", Transport::Tcp).unwrap();
    let resolved = tcp.resolve(&name).await.unwrap();
    assert_eq!(
        resolved.targets,
        [Peer::tcp("127.0.0.4:5073".parse().unwrap(), None)]
    );

    // No NAPTR: the transport's SRV name. No SRV either: the name's A at 5060.
    let resolved = resolve(&udp, "srvonly.test").await.unwrap();
    assert_eq!(
        resolved.targets,
        [Peer::udp("127.0.0.2:6000".parse().unwrap())]
    );
    let resolved = resolve(&udp, "plain.test").await.unwrap();
    assert_eq!(
        resolved.targets,
        [Peer::udp("127.0.0.5:5060".parse().unwrap())]
    );

    // A name with a port: its A records only, at that port.
    let resolved = resolve(&udp, "plain.test:5080").await.unwrap();
    assert_eq!(
        resolved.targets,
        [Peer::udp("127.0.0.5:5080".parse().unwrap())]
    );
    let log = dns.log();
    assert_eq!(
        log.matches("query[NAPTR] plain.test").count(),
        1,
        "only the portless lookup asks NAPTR:\n{log}"
    );

    // Nothing at all: an error that names the trunk.
    let error = resolve(&udp, "nope.test").await.unwrap_err();
    assert_eq!(error, TrunkDnsError::NoTargets("nope.test".into()));
}

#[tokio::test]
async fn a_call_fails_over_from_the_silent_first_target_to_the_second_and_bridges() {
    // Both targets on loopback addresses of their own: the first takes the INVITE and never
    // answers, the second is the callee.
    let mut silent = TestUa::udp_at(
        "127.0.0.2:0".parse().unwrap(),
        "127.0.0.1:9".parse().unwrap(),
    )
    .await;
    let callee = TestUa::udp_at(
        "127.0.0.3:0".parse().unwrap(),
        "127.0.0.1:9".parse().unwrap(),
    )
    .await;
    let (first, second) = (silent.local_addr(), callee.local_addr());
    let dns = Dnsmasq::start(carrier_records(first, second)).await;
    let mut bridge = bridge_via(&dns, callee).await;
    assert_eq!(bridge.running.status.trunk_targets(), [first, second]);
    assert_eq!(
        healthz_targets(&bridge).await,
        [first.to_string(), second.to_string()]
    );

    let callid = bridge.makecall("1001", "2001", "3001").await;
    let mut phone = Phone::udp(&bridge, "1001").await;
    phone.call("2001").await;

    // The first target (priority 10) gets leg B's INVITE, for the trunk's name.
    let invite = next_invite(&mut silent, Duration::from_secs(5), &dns).await;
    let sent = Instant::now();
    assert_eq!(invite.uri.to_string(), "sip:3001@carrier.test");
    // ... and says nothing: at Timer B (64·T1, 3.2 s with the test's T1) the INVITE goes to
    // the second, a new transaction for the same call.
    let invite_b = next_invite(&mut bridge.callee, Duration::from_secs(10), &dns).await;
    let waited = sent.elapsed();
    assert!(
        waited >= Duration::from_millis(2900),
        "the second target was tried after {waited:?}, before Timer B"
    );
    assert_eq!(invite_b.uri.to_string(), "sip:3001@carrier.test");
    assert_eq!(invite_b.headers.call_id(), invite.headers.call_id());
    assert_ne!(
        invite_b.headers.top_via().unwrap().branch(),
        invite.headers.top_via().unwrap().branch(),
        "a new transaction"
    );

    answer_and_hang_up(&mut bridge, &mut phone, &invite_b, &callid).await;
    // The silent target saw only the INVITE and its retransmissions: no ACK, BYE or CANCEL.
    while let Some((message, _)) = silent.try_recv(Duration::from_millis(100)).await {
        match message {
            Message::Request(r) if r.method == Method::Invite => {}
            other => panic!(
                "the first target got more than the INVITE:\n{}",
                String::from_utf8_lossy(&other.to_bytes())
            ),
        }
    }
    bridge.assert_drained().await;
}

#[tokio::test]
async fn the_targets_follow_the_records_when_their_ttl_expires() {
    let mut old = TestUa::udp_at(
        "127.0.0.2:0".parse().unwrap(),
        "127.0.0.1:9".parse().unwrap(),
    )
    .await;
    let callee = TestUa::udp_at(
        "127.0.0.3:0".parse().unwrap(),
        "127.0.0.1:9".parse().unwrap(),
    )
    .await;
    let (first, second) = (old.local_addr(), callee.local_addr());
    let only = |target: SocketAddr| {
        DnsRecords::new("test")
            .ttl(1)
            .naptr("carrier.test", 10, 50, "SIP+D2U", "_sip._udp.carrier.test")
            .srv(
                "_sip._udp.carrier.test",
                "sip.carrier.test",
                target.port(),
                10,
                0,
            )
            .host("sip.carrier.test", target.ip())
    };
    let mut dns = Dnsmasq::start(only(first)).await;
    let mut bridge = bridge_via(&dns, callee).await;
    // The re-resolution is due MIN_REFRESH after the start's resolution, which ended just now.
    let started = Instant::now();
    assert_eq!(healthz_targets(&bridge).await, [first.to_string()]);

    // The carrier moves: the same names now lead to the second address and port.
    dns.restart(only(second)).await;
    let moved = Instant::now();
    let deadline = moved + MIN_REFRESH + Duration::from_secs(10);
    while healthz_targets(&bridge).await != [second.to_string()] {
        assert!(
            Instant::now() < deadline,
            "targets still {:?} {:?} after the records changed; dnsmasq log:\n{}",
            healthz_targets(&bridge).await,
            moved.elapsed(),
            dns.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Not before the floor of re-resolution (the TTL is 1 s, the floor 5 s).
    assert!(
        started.elapsed() >= MIN_REFRESH - Duration::from_millis(500),
        "re-resolved {:?} after the start",
        started.elapsed()
    );

    // New calls go straight to the new target; the old one hears nothing.
    let callid = bridge.makecall("1001", "2001", "3001").await;
    let mut phone = Phone::udp(&bridge, "1001").await;
    phone.call("2001").await;
    let invite = next_invite(&mut bridge.callee, Duration::from_secs(2), &dns).await;
    assert_eq!(invite.uri.to_string(), "sip:3001@carrier.test");
    answer_and_hang_up(&mut bridge, &mut phone, &invite, &callid).await;
    old.expect_silence(Duration::from_millis(100)).await;
    bridge.assert_drained().await;
}

#[tokio::test]
async fn a_failed_re_resolution_keeps_the_last_targets() {
    let callee = TestUa::udp_at(
        "127.0.0.3:0".parse().unwrap(),
        "127.0.0.1:9".parse().unwrap(),
    )
    .await;
    let target = callee.local_addr();
    let records = DnsRecords::new("test")
        .ttl(1)
        .srv(
            "_sip._udp.carrier.test",
            "sip.carrier.test",
            target.port(),
            10,
            0,
        )
        .host("sip.carrier.test", target.ip());
    let mut dns = Dnsmasq::start(records).await;
    let mut bridge = bridge_via(&dns, callee).await;
    // The carrier's records vanish: every lookup now answers "no such name".
    dns.restart(DnsRecords::new("test")).await;
    let deadline = Instant::now() + MIN_REFRESH + Duration::from_secs(10);
    while !dns.log().contains("query[SRV] _sip._udp.carrier.test") {
        assert!(
            Instant::now() < deadline,
            "no re-resolution; dnsmasq log:\n{}",
            dns.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Asked, answered NXDOMAIN, and the last targets stay: calls still reach the carrier.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(healthz_targets(&bridge).await, [target.to_string()]);
    let callid = bridge.makecall("1001", "2001", "3001").await;
    let mut phone = Phone::udp(&bridge, "1001").await;
    phone.call("2001").await;
    let invite = next_invite(&mut bridge.callee, Duration::from_secs(2), &dns).await;
    answer_and_hang_up(&mut bridge, &mut phone, &invite, &callid).await;
    bridge.assert_drained().await;
}

#[tokio::test]
async fn a_trunk_name_that_resolves_to_nothing_stops_the_start() {
    let dns = Dnsmasq::start(DnsRecords::new("test").host("other.test", ip("127.0.0.9"))).await;
    let config = |address: &str, server: SocketAddr| {
        Config::load(
            None,
            std::iter::empty(),
            &[
                "sip.listen=\"127.0.0.1:0\"".into(),
                "api.listen=\"127.0.0.1:0\"".into(),
                "store.path=\"\"".into(),
                format!("trunk.address=\"{address}\""),
                format!("dns.servers=[\"{server}\"]"),
            ],
        )
        .unwrap()
    };
    let start_error = |config: Config| async move {
        match callbridge::start(&config).await {
            Ok(running) => {
                running.shutdown();
                panic!(
                    "callbridge started with targets {:?}",
                    running.status.trunk_targets()
                );
            }
            Err(error) => error.to_string(),
        }
    };
    let error = start_error(config("nope.test", dns.addr())).await;
    assert!(
        error.contains("\"nope.test\"") && error.contains("has no address"),
        "{error}"
    );
    // A resolver that does not answer: a start error too, within the resolution's bound.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let started = Instant::now();
    let error = start_error(config("carrier.test", silent.local_addr().unwrap())).await;
    assert!(error.contains("\"carrier.test\""), "{error}");
    assert!(
        error.contains("lookup of carrier.test failed") || error.contains("took longer"),
        "{error}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}
