//! Building what callbridge sends on each leg, with topology hiding: nothing of leg A (the real
//! number, its Call-ID, Via, Contact, unknown headers) is ever copied to leg B, and leg B's
//! topology is not copied back to leg A.

use bytes::Bytes;
use sip_core::{ids, HeaderName, Method, NameAddr, Request, Response, Transport, Uri};

use crate::intent::Intent;

/// What callbridge writes about itself into the messages it originates.
#[derive(Clone, Debug)]
pub struct LocalIdentity {
    /// Host written into Contact and From (`sip.public_addr`).
    pub public_addr: String,
    /// The SIP port (same for UDP and TCP).
    pub port: u16,
    /// The SIP-over-TLS listener's port (`tls.listen`), when there is one. A TLS port is not
    /// the UDP/TCP one: a Contact reached over TLS must name it, or the peer's requests in the
    /// dialog would open TLS to a port that does not speak it.
    pub tls_port: Option<u16>,
    /// Value of the Server (responses) and User-Agent (requests) header (`sip.server_header`).
    /// `None`: the header is omitted, so that a scanner learns nothing it could look up.
    pub agent: Option<String>,
}

impl LocalIdentity {
    /// Our Contact for a leg: `<sip:user@public_addr:port>`.
    pub fn contact(&self, user: &str) -> Uri {
        Uri::sip(Some(user), &self.public_addr, Some(self.port))
    }

    /// Our Contact for a leg whose peer is reached over `transport`: over a
    /// connection-oriented transport it says so (`;transport=tcp`, `;transport=tls`), so that
    /// the peer's requests in the dialog come back over it (RFC 3261 §19.1.4), and over TLS it
    /// names the TLS listener's port.
    pub fn contact_over(&self, user: &str, transport: Transport) -> Uri {
        let port = match (transport, self.tls_port) {
            (Transport::Tls, Some(tls_port)) => tls_port,
            _ => self.port,
        };
        let uri = Uri::sip(Some(user), &self.public_addr, Some(port));
        if transport.is_reliable() {
            uri.with_param("transport", Some(&transport.as_str().to_ascii_lowercase()))
        } else {
            uri
        }
    }

    /// Adds `Server` (or, for a request, `User-Agent`) naming callbridge, if configured.
    pub fn sign(&self, headers: &mut sip_core::Headers, name: HeaderName) {
        if let Some(agent) = &self.agent {
            headers.push(name, agent.clone());
        }
    }
}

/// Headers of an answer on leg A or a request on leg B that may carry the SDP body through.
fn copy_body(from_headers: &sip_core::Headers, to: &mut sip_core::Headers, body: &Bytes) {
    if body.is_empty() {
        return;
    }
    let content_type = from_headers
        .content_type()
        .unwrap_or("application/sdp")
        .to_owned();
    to.set(HeaderName::ContentType, content_type);
}

/// The INVITE of leg B: fresh Call-ID and From tag, From = the dedicated number at our public
/// address, Request-URI and To = the callee at the trunk, P-Asserted-Identity = the dedicated
/// number. Only the body (already rewritten by the media session) and its Content-Type come
/// from leg A. The Contact is [`LocalIdentity::contact_over`] the trunk's transport.
pub fn leg_b_invite(
    local: &LocalIdentity,
    intent: &Intent,
    trunk: &TrunkUri<'_>,
    a_invite: &Request,
    body: Bytes,
) -> Request {
    let target = Uri::sip(Some(&intent.callee), trunk.host, trunk.port);
    let mut request = Request::new(Method::Invite, target.clone());
    let from_uri = Uri::sip(Some(&intent.caller), &local.public_addr, None);
    let from = NameAddr::new(from_uri.clone()).with_tag(&ids::new_tag());
    let h = &mut request.headers;
    h.push(HeaderName::From, from.to_string());
    h.push(HeaderName::To, NameAddr::new(target).to_string());
    h.push(HeaderName::CallId, ids::new_call_id(&local.public_addr));
    h.push(HeaderName::CSeq, "1 INVITE");
    h.push(
        HeaderName::MaxForwards,
        forwarded_max_forwards(a_invite).to_string(),
    );
    let contact = local.contact_over(&intent.caller, trunk.transport);
    h.push(HeaderName::Contact, NameAddr::new(contact).to_string());
    h.push(
        HeaderName::PAssertedIdentity,
        NameAddr::new(from_uri).to_string(),
    );
    h.push(HeaderName::Allow, ALLOW);
    h.push(HeaderName::Supported, SUPPORTED.join(", "));
    local.sign(h, HeaderName::UserAgent);
    copy_body(&a_invite.headers, h, &body);
    request.body = body;
    request
}

/// The trunk as leg B's INVITE names it: Request-URI and To host (the configured name or
/// address), and the transport its Contact asks for.
#[derive(Clone, Copy, Debug)]
pub struct TrunkUri<'a> {
    pub host: &'a str,
    pub port: Option<u16>,
    pub transport: sip_core::Transport,
}

/// Max-Forwards of leg B's INVITE: leg A's less one, as a proxy does (RFC 3261 §16.6 step 3),
/// so that a loop through callbridge (the trunk sending leg B back as a new leg A, or two
/// B2BUAs calling each other) ends with a 483 instead of running forever, as it would if
/// every leg started again at 70. Leg A without one (or with an unreadable one) gets the
/// default 70; leg A at 0 was refused with 483 before the intent was claimed.
fn forwarded_max_forwards(a_invite: &Request) -> u32 {
    match a_invite.headers.max_forwards() {
        Some(Ok(hops)) if hops > 0 => hops - 1,
        _ => sip_core::dialog::MAX_FORWARDS,
    }
}

/// The SIP extensions (option tags, RFC 3261 §20.37) callbridge supports: the `Supported`
/// of leg B's INVITE and of its answer to OPTIONS, and what a `Require` may ask for
/// (anything else gets 420).
pub const SUPPORTED: &[&str] = &["100rel", "timer"];

/// The `Require` tags of `request` that callbridge does not support (RFC 3261 §8.2.2.3).
pub fn unsupported_requirements(request: &Request) -> Vec<String> {
    request
        .headers
        .get_all(&HeaderName::Require)
        .flat_map(sip_core::message::split_top_level_commas)
        .map(str::trim)
        .filter(|tag| !tag.is_empty() && !SUPPORTED.iter().any(|s| s.eq_ignore_ascii_case(tag)))
        .take(8)
        .map(str::to_owned)
        .collect()
}

/// The methods callbridge handles inside a call.
pub const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO, PRACK";

/// An OPTIONS keepalive to the trunk (`trunk.ping_secs`): out of any dialog, so a fresh
/// Call-ID and From tag each time; From `sip:ping@{public_addr}`, Request-URI and To the
/// trunk as configured, `Max-Forwards: 70`, no Contact (RFC 3261 §11.1 makes it optional,
/// and a ping starts nothing). The transaction layer adds the Via.
pub fn trunk_ping(local: &LocalIdentity, trunk: &TrunkUri<'_>) -> Request {
    let target = Uri::sip(None, trunk.host, trunk.port);
    let mut request = Request::new(Method::Options, target.clone());
    let from =
        NameAddr::new(Uri::sip(Some("ping"), &local.public_addr, None)).with_tag(&ids::new_tag());
    let h = &mut request.headers;
    h.push(HeaderName::From, from.to_string());
    h.push(HeaderName::To, NameAddr::new(target).to_string());
    h.push(HeaderName::CallId, ids::new_call_id(&local.public_addr));
    h.push(HeaderName::CSeq, "1 OPTIONS");
    h.push(
        HeaderName::MaxForwards,
        sip_core::dialog::MAX_FORWARDS.to_string(),
    );
    local.sign(h, HeaderName::UserAgent);
    request
}

/// A response on leg A to `a_request`, relaying `status`/`reason` (and the rewritten body) of
/// leg B's response. Only the status line, body and Content-Type cross; the To tag and Contact
/// are callbridge's own (the Contact over leg A's `transport`: over TLS it names the TLS port,
/// so that leg A's in-dialog requests come back over TLS).
pub fn relay_response_to_a(
    local: &LocalIdentity,
    a_request: &Request,
    a_local_tag: &str,
    (contact_user, transport): (&str, Transport),
    from_b: &Response,
    body: Bytes,
) -> Response {
    let mut response = Response::to_request(a_request, from_b.status, Some(&from_b.reason));
    tag_to(&mut response, a_local_tag);
    if (101..300).contains(&from_b.status) {
        // RFC 3261 §12.1.1: a response that makes a dialog (early or confirmed) carries the
        // request's Record-Route, every value in order, so that the caller's ACK, BYE and
        // re-INVITEs follow the proxies that asked to stay on the path (a dispatcher in front
        // of several nodes relays them to the node that holds the call).
        for row in a_request.headers.iter() {
            if row.name == HeaderName::RecordRoute {
                response
                    .headers
                    .push(HeaderName::RecordRoute, row.value.clone());
            }
        }
    }
    if from_b.status < 300 {
        response.headers.push(
            HeaderName::Contact,
            NameAddr::new(local.contact_over(contact_user, transport)).to_string(),
        );
    }
    local.sign(&mut response.headers, HeaderName::Server);
    copy_body(&from_b.headers, &mut response.headers, &body);
    response.body = body;
    response
}

/// A response generated by callbridge itself (refusals, 487, 480, 491, 500, ...), with a
/// `Reason` header (RFC 3326) saying why.
pub fn local_response(
    local: &LocalIdentity,
    request: &Request,
    status: u16,
    local_tag: Option<&str>,
    reason_text: Option<&str>,
) -> Response {
    let mut response = Response::to_request(request, status, None);
    if let Some(tag) = local_tag {
        tag_to(&mut response, tag);
    }
    if let Some(text) = reason_text {
        response
            .headers
            .push(HeaderName::Reason, reason_header(status, text));
    }
    local.sign(&mut response.headers, HeaderName::Server);
    response
}

/// `SIP;cause=403;text="..."`, quotes and backslashes removed from the text.
pub fn reason_header(cause: u16, text: &str) -> String {
    let clean: String = text
        .chars()
        .filter(|c| *c != '"' && *c != '\\' && !c.is_control())
        .collect();
    format!("SIP;cause={cause};text=\"{clean}\"")
}

/// Adds our tag to the To header of a response, unless it already carries one.
pub fn tag_to(response: &mut Response, tag: &str) {
    let Some(to) = response.headers.get(&HeaderName::To) else {
        return;
    };
    if let Ok(to) = NameAddr::parse(to) {
        if to.tag().is_none() {
            response
                .headers
                .set(HeaderName::To, to.with_tag(tag).to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sip_core::{Message, ParseLimits, Peer};
    use std::time::{Duration, Instant};

    fn a_invite() -> Request {
        let text = "INVITE sip:2001@10.0.0.1 SIP/2.0\r\n\
            Via: SIP/2.0/UDP 10.9.9.9:5060;branch=z9hG4bKa1\r\n\
            From: \"Real Name\" <sip:1001@carrier.example>;tag=from-a\r\n\
            To: <sip:2001@10.0.0.1>\r\n\
            Call-ID: secret-call-id@10.9.9.9\r\n\
            CSeq: 7 INVITE\r\n\
            Contact: <sip:1001@10.9.9.9:5060>\r\n\
            P-Asserted-Identity: <sip:1001@carrier.example>\r\n\
            X-Internal: topology\r\n\
            Record-Route: <sip:edge.carrier.example;lr>\r\n\
            Content-Type: application/sdp\r\n\
            Content-Length: 4\r\n\r\nv=0\n";
        match Message::parse(text.as_bytes(), &ParseLimits::default()).unwrap() {
            Message::Request(r) => r,
            _ => unreachable!(),
        }
    }

    fn local() -> LocalIdentity {
        LocalIdentity {
            public_addr: "192.0.2.10".into(),
            port: 5060,
            tls_port: Some(5061),
            agent: Some("callbridge".into()),
        }
    }

    fn intent() -> Intent {
        let now = Instant::now();
        Intent {
            callid: "42".into(),
            telnum: "1001".into(),
            caller: "2001".into(),
            callee: "3001".into(),
            created: now,
            expires: now + Duration::from_secs(120),
        }
    }

    /// Leg B's INVITE for leg A's `a`, toward the trunk at 198.51.100.1:5080.
    fn leg_b_of(a: &Request) -> Request {
        let trunk = TrunkUri {
            host: "198.51.100.1",
            port: Some(5080),
            transport: sip_core::Transport::Udp,
        };
        leg_b_invite(&local(), &intent(), &trunk, a, a.body.clone())
    }

    #[test]
    fn leg_b_reveals_nothing_of_leg_a() {
        let a = a_invite();
        let b = leg_b_of(&a);
        let text = String::from_utf8(b.to_bytes().to_vec()).unwrap();
        for secret in [
            "1001",
            "secret-call-id",
            "10.9.9.9",
            "carrier.example",
            "X-Internal",
            "from-a",
            "Real Name",
        ] {
            assert!(!text.contains(secret), "leg B leaks {secret:?}:\n{text}");
        }
        assert_eq!(b.uri.to_string(), "sip:3001@198.51.100.1:5080");
        let from = b.headers.from().unwrap();
        assert_eq!(from.uri.user(), Some("2001"));
        assert_eq!(from.uri.host(), "192.0.2.10");
        assert!(from.tag().is_some());
        assert_eq!(b.headers.to().unwrap().uri.user(), Some("3001"));
        let pai = b.headers.p_asserted_identity().unwrap().unwrap();
        assert_eq!(pai.uri.user(), Some("2001"));
        assert_eq!(b.headers.cseq().unwrap().seq, 1);
        assert_eq!(b.headers.content_type(), Some("application/sdp"));
        assert_eq!(&b.body[..], b"v=0\n");
        assert!(b.headers.get(&HeaderName::Via).is_none());
        // No Max-Forwards on leg A: the default.
        assert_eq!(b.headers.max_forwards(), Some(Ok(70)));
    }

    #[test]
    fn leg_b_max_forwards_is_leg_as_less_one() {
        let b_of = |hops: &str| {
            let mut a = a_invite();
            a.headers.set(HeaderName::MaxForwards, hops);
            leg_b_of(&a).headers.max_forwards()
        };
        assert_eq!(b_of("70"), Some(Ok(69)));
        assert_eq!(b_of("1"), Some(Ok(0)));
        assert_eq!(b_of("200"), Some(Ok(199)));
        assert_eq!(b_of("many"), Some(Ok(70)));
    }

    #[test]
    fn leg_b_contact_names_the_transport_and_over_tls_the_tls_port() {
        let contact_toward = |trunk: Peer, local: &LocalIdentity| {
            let a = a_invite();
            let uri = TrunkUri {
                host: "198.51.100.1",
                port: Some(5080),
                transport: trunk.transport,
            };
            let b = leg_b_invite(local, &intent(), &uri, &a, a.body.clone());
            let contacts = b.headers.contacts().unwrap();
            contacts.first().unwrap().uri.to_string()
        };
        let at = "198.51.100.1:5080".parse().unwrap();
        assert_eq!(
            contact_toward(Peer::udp(at), &local()),
            "sip:2001@192.0.2.10:5060"
        );
        assert_eq!(
            contact_toward(Peer::tcp(at, None), &local()),
            "sip:2001@192.0.2.10:5060;transport=tcp"
        );
        assert_eq!(
            contact_toward(Peer::tls(at, None), &local()),
            "sip:2001@192.0.2.10:5061;transport=tls"
        );
        // Without a TLS listener there is no other port to name.
        let no_listener = LocalIdentity {
            tls_port: None,
            ..local()
        };
        assert_eq!(
            contact_toward(Peer::tls(at, None), &no_listener),
            "sip:2001@192.0.2.10:5060;transport=tls"
        );
    }

    #[test]
    fn relayed_response_carries_status_and_body_only() {
        let a = a_invite();
        let b_ringing = match Message::parse(
            b"SIP/2.0 183 Session Progress\r\nVia: SIP/2.0/UDP 192.0.2.10;branch=z9hG4bKb\r\n\
              From: <sip:2001@192.0.2.10>;tag=f\r\nTo: <sip:3001@198.51.100.1>;tag=callee-tag\r\n\
              Call-ID: b-leg\r\nCSeq: 1 INVITE\r\nContact: <sip:3001@198.51.100.77>\r\n\
              Content-Type: application/sdp\r\nContent-Length: 3\r\n\r\nv=0",
            &ParseLimits::default(),
        )
        .unwrap()
        {
            Message::Response(r) => r,
            _ => unreachable!(),
        };
        let r = relay_response_to_a(
            &local(),
            &a,
            "a-tag",
            ("2001", Transport::Udp),
            &b_ringing,
            b_ringing.body.clone(),
        );
        let text = String::from_utf8(r.to_bytes().to_vec()).unwrap();
        assert!(text.starts_with("SIP/2.0 183 Session Progress\r\n"));
        assert!(!text.contains("198.51.100.77") && !text.contains("callee-tag"));
        assert_eq!(r.headers.to().unwrap().tag(), Some("a-tag"));
        assert_eq!(r.headers.call_id(), Some("secret-call-id@10.9.9.9"));
        assert_eq!(
            r.headers.contacts().unwrap()[0].uri.to_string(),
            "sip:2001@192.0.2.10:5060"
        );
        assert_eq!(&r.body[..], b"v=0");
        // The proxies on leg A's path stay on it (RFC 3261 §12.1.1); leg B's do not cross.
        assert_eq!(
            r.headers.record_routes().unwrap(),
            a.headers.record_routes().unwrap()
        );
    }

    #[test]
    fn dialog_making_answers_on_leg_a_copy_its_record_route_in_order() {
        let text = String::from_utf8(a_invite().to_bytes().to_vec())
            .unwrap()
            .replace(
                "Record-Route: <sip:edge.carrier.example;lr>\r\n",
                "Record-Route: <sip:10.0.0.9;lr;ftag=x>, <sip:edge.carrier.example;lr>\r\n\
                 Record-Route: <sip:core.carrier.example;lr>\r\n",
            );
        let a = match Message::parse(text.as_bytes(), &ParseLimits::default()).unwrap() {
            Message::Request(r) => r,
            _ => unreachable!(),
        };
        let from_b = |status: u16| {
            let text = format!(
                "SIP/2.0 {status} X\r\nVia: SIP/2.0/UDP 192.0.2.10;branch=z9hG4bKb\r\n\
                 From: <sip:2001@192.0.2.10>;tag=f\r\nTo: <sip:3001@198.51.100.1>;tag=t\r\n\
                 Call-ID: b-leg\r\nCSeq: 1 INVITE\r\n\
                 Record-Route: <sip:trunk-edge.example;lr>\r\nContent-Length: 0\r\n\r\n"
            );
            match Message::parse(text.as_bytes(), &ParseLimits::default()).unwrap() {
                Message::Response(r) => r,
                _ => unreachable!(),
            }
        };
        let uris = |r: &Response| -> Vec<String> {
            r.headers
                .record_routes()
                .unwrap()
                .iter()
                .map(|n| n.uri.to_string())
                .collect()
        };
        let relay = |b: &Response| {
            relay_response_to_a(
                &local(),
                &a,
                "a",
                ("2001", Transport::Udp),
                b,
                b.body.clone(),
            )
        };
        for status in [180, 183, 200] {
            let r = relay(&from_b(status));
            let text = String::from_utf8(r.to_bytes().to_vec()).unwrap();
            assert_eq!(
                uris(&r),
                [
                    "sip:10.0.0.9;lr;ftag=x",
                    "sip:edge.carrier.example;lr",
                    "sip:core.carrier.example;lr"
                ],
                "{status}: {text}"
            );
            assert!(!text.contains("trunk-edge"), "{text}");
        }
        assert!(
            uris(&relay(&from_b(486))).is_empty(),
            "a final refusal makes no dialog"
        );
    }

    #[test]
    fn a_trunk_ping_is_a_fresh_out_of_dialog_options() {
        let trunk = TrunkUri {
            host: "198.51.100.1",
            port: Some(5080),
            transport: sip_core::Transport::Udp,
        };
        let anonymous = LocalIdentity {
            agent: None,
            ..local()
        };
        let ping = trunk_ping(&anonymous, &trunk);
        assert_eq!(ping.method, Method::Options);
        assert_eq!(ping.uri.to_string(), "sip:198.51.100.1:5080");
        let from = ping.headers.from().unwrap();
        assert_eq!(from.uri.to_string(), "sip:ping@192.0.2.10");
        assert!(from.tag().is_some());
        let to = ping.headers.to().unwrap();
        assert_eq!(to.uri.to_string(), "sip:198.51.100.1:5080");
        assert!(to.tag().is_none(), "out of dialog");
        let cseq = ping.headers.cseq().unwrap();
        assert_eq!((cseq.seq, cseq.method), (1, Method::Options));
        assert_eq!(ping.headers.max_forwards(), Some(Ok(70)));
        assert!(ping.headers.get(&HeaderName::UserAgent).is_none());
        assert!(ping.headers.get(&HeaderName::Contact).is_none());
        // Each ping is its own: another Call-ID and tag.
        let again = trunk_ping(&anonymous, &trunk);
        assert_ne!(again.headers.call_id(), ping.headers.call_id());
        assert_ne!(again.headers.from().unwrap().tag(), from.tag());
        // The configured agent, and only it, names the software.
        let signed = trunk_ping(&local(), &trunk);
        assert_eq!(
            signed.headers.get(&HeaderName::UserAgent),
            Some("callbridge")
        );
    }

    #[test]
    fn local_responses_explain_themselves() {
        let r = local_response(&local(), &a_invite(), 403, Some("t"), Some("no \"intent\""));
        assert_eq!(r.status, 403);
        assert_eq!(
            r.headers.get(&HeaderName::Reason),
            Some("SIP;cause=403;text=\"no intent\"")
        );
        assert_eq!(r.headers.to().unwrap().tag(), Some("t"));
    }
}
