//! The Kamailio carrier harness ([`sip_tests::carrier`]) proved on its own, before callbridge's
//! trunk is pointed at it: scripted endpoints play callbridge, compute their own digest
//! answers with the `digest_auth` crate (qop=auth, nc, cnonce; method = the SIP method, uri =
//! the Request-URI) and check what a real Kamailio challenges, accepts, refuses and relays.

use std::net::SocketAddr;

use digest_auth::{AlgorithmType, AuthContext, HttpMethod, Qop, WwwAuthenticateHeader};
use sip_core::message::build_ack_for_non_2xx;
use sip_core::{ids, HeaderName, Method, Request, Response};
use sip_tests::carrier::{Algorithm, Carrier, CarrierOptions};
use sip_tests::{request, sdp, TestUa};

/// The From domain of the calls, hence the realm of Kamailio's INVITE challenges.
const CALLER_DOMAIN: &str = "trunk.callbridge.test";
/// The To domain of the registrations, hence the realm of Kamailio's REGISTER challenges.
const REGISTRAR_DOMAIN: &str = "carrier.test";

/// A callee UA (UDP, where the carrier relays INVITEs) and a carrier relaying to it.
async fn carrier_and_callee(configure: impl FnOnce(&mut CarrierOptions)) -> (Carrier, TestUa) {
    let mut callee = TestUa::udp("127.0.0.1:9".parse().expect("addr")).await;
    let mut options = CarrierOptions::new(callee.local_addr());
    configure(&mut options);
    let carrier = Carrier::start(options).await;
    callee.server = carrier.addr();
    (carrier, callee)
}

/// The header named `name` of `response`, or a failure showing the carrier's log.
fn header<'a>(response: &'a Response, name: &str, carrier: &Carrier) -> &'a str {
    response
        .headers
        .get(&HeaderName::parse(name))
        .unwrap_or_else(|| {
            panic!(
                "{} {} without {name}:\n{}\ncarrier log:\n{}",
                response.status,
                response.reason,
                String::from_utf8_lossy(&response.to_bytes()),
                carrier.log()
            )
        })
}

/// Parses a challenge and checks what every challenge of the carrier must say: Digest, the
/// expected realm and algorithm, qop=auth.
fn parse_challenge(value: &str, realm: &str, algorithm: Algorithm) -> WwwAuthenticateHeader {
    assert!(
        value.starts_with("Digest "),
        "not a digest challenge: {value}"
    );
    let challenge = digest_auth::parse(value)
        .unwrap_or_else(|e| panic!("unparseable challenge ({e}): {value}"));
    assert_eq!(challenge.realm, realm, "realm of {value}");
    assert_eq!(
        challenge.qop.as_deref(),
        Some(&[Qop::AUTH][..]),
        "qop of {value}"
    );
    let expected = match algorithm {
        Algorithm::Md5 => AlgorithmType::MD5,
        Algorithm::Sha256 => AlgorithmType::SHA2_256,
    };
    assert_eq!(challenge.algorithm.algo, expected, "algorithm of {value}");
    assert!(!challenge.algorithm.sess, "algorithm of {value}");
    assert!(
        value.contains(&format!("algorithm={}", algorithm.as_str())),
        "the challenge names its algorithm: {value}"
    );
    challenge
}

/// The credentials header value answering `challenge` for `request` (its method and
/// Request-URI); each call counts one more use of the nonce (nc) and draws a new cnonce.
fn answer(
    challenge: &mut WwwAuthenticateHeader,
    request: &Request,
    username: &str,
    password: &str,
) -> String {
    let uri = request.uri.as_str();
    let context = AuthContext::new_with_method(
        username,
        password,
        uri,
        Option::<&[u8]>::None,
        HttpMethod::from(request.method.as_str()),
    );
    let authorization = challenge
        .respond(&context)
        .unwrap_or_else(|e| panic!("cannot answer the challenge: {e}"));
    assert_eq!(authorization.qop, Some(Qop::AUTH));
    assert!(authorization.cnonce.is_some(), "qop=auth needs a cnonce");
    authorization.to_header_string()
}

/// callbridge's side of calls and registrations through the carrier: one UA, one Call-ID per
/// call or registration, CSeq counting up.
struct Trunk {
    ua: TestUa,
    user: String,
    call_id: String,
    from_tag: String,
    cseq: u32,
}

impl Trunk {
    fn new(ua: TestUa, user: &str) -> Trunk {
        Trunk {
            ua,
            user: user.to_owned(),
            call_id: ids::new_call_id("trunk.test"),
            from_tag: ids::new_tag(),
            cseq: 0,
        }
    }

    /// Starts another call (or registration): new Call-ID and From tag.
    fn next_call(&mut self) {
        self.call_id = ids::new_call_id("trunk.test");
        self.from_tag = ids::new_tag();
    }

    fn via(&self) -> String {
        format!(
            "SIP/2.0/{} {};branch={};rport",
            self.ua.transport(),
            self.ua.local_addr(),
            ids::new_branch()
        )
    }

    fn contact(&self) -> String {
        let transport = match self.ua.transport() {
            "TCP" => ";transport=tcp",
            "TLS" => ";transport=tls",
            _ => "",
        };
        format!("<sip:{}@{}{transport}>", self.user, self.ua.local_addr())
    }

    /// An INVITE to `dialled` at the carrier (next CSeq, new branch), with a
    /// Proxy-Authorization built by `credentials` from the request as it stands.
    fn invite(
        &mut self,
        dialled: &str,
        credentials: Option<&mut dyn FnMut(&Request) -> String>,
    ) -> Request {
        self.cseq += 1;
        let mut invite = request(&format!(
            "INVITE sip:{dialled}@{carrier} SIP/2.0\n\
             Via: {via}\n\
             Max-Forwards: 70\n\
             From: <sip:{user}@{CALLER_DOMAIN}>;tag={tag}\n\
             To: <sip:{dialled}@{carrier}>\n\
             Call-ID: {call_id}\n\
             CSeq: {cseq} INVITE\n\
             Contact: {contact}\n\
             Content-Type: application/sdp\n\
             \n{body}",
            carrier = self.ua.server,
            via = self.via(),
            user = self.user,
            tag = self.from_tag,
            call_id = self.call_id,
            cseq = self.cseq,
            contact = self.contact(),
            body = sdp(self.ua.local_addr(), 1),
        ));
        if let Some(credentials) = credentials {
            let value = credentials(&invite);
            invite
                .headers
                .push(HeaderName::parse("Proxy-Authorization"), value);
        }
        invite
    }

    /// A REGISTER of `aor_user` at the registrar domain for `expires` seconds (next CSeq, new
    /// branch), with an Authorization built by `credentials`.
    fn register(
        &mut self,
        aor_user: &str,
        expires: u32,
        credentials: Option<&mut dyn FnMut(&Request) -> String>,
    ) -> Request {
        self.cseq += 1;
        let mut register = request(&format!(
            "REGISTER sip:{REGISTRAR_DOMAIN} SIP/2.0\n\
             Via: {via}\n\
             Max-Forwards: 70\n\
             From: <sip:{aor_user}@{REGISTRAR_DOMAIN}>;tag={tag}\n\
             To: <sip:{aor_user}@{REGISTRAR_DOMAIN}>\n\
             Call-ID: {call_id}\n\
             CSeq: {cseq} REGISTER\n\
             Contact: {contact}\n\
             Expires: {expires}\n\n",
            via = self.via(),
            tag = self.from_tag,
            call_id = self.call_id,
            cseq = self.cseq,
            contact = self.contact(),
        ));
        if let Some(credentials) = credentials {
            let value = credentials(&register);
            register
                .headers
                .push(HeaderName::parse("Authorization"), value);
        }
        register
    }

    /// A request in the dialog the 2xx `answer` to `invite` set up: to the callee's Contact,
    /// through the route set the carrier recorded (Record-Route reversed, RFC 3261 12.1.2).
    fn in_dialog(&mut self, method: Method, invite: &Request, answer: &Response) -> Request {
        let cseq = if method == Method::Ack {
            invite.headers.cseq().expect("CSeq").seq
        } else {
            self.cseq += 1;
            self.cseq
        };
        let target = answer.headers.contacts().expect("Contact of the 2xx")[0]
            .uri
            .as_str()
            .to_owned();
        let mut routes: Vec<&str> = answer
            .headers
            .get_all(&HeaderName::RecordRoute)
            .flat_map(sip_core::message::split_top_level_commas)
            .collect();
        routes.reverse();
        let mut text = format!(
            "{method} {target} SIP/2.0\n\
             Via: {via}\n\
             Max-Forwards: 70\n\
             From: {from}\n\
             To: {to}\n\
             Call-ID: {call_id}\n\
             CSeq: {cseq} {method}\n",
            via = self.via(),
            from = invite.headers.get(&HeaderName::From).expect("From"),
            to = answer.headers.get(&HeaderName::To).expect("To"),
            call_id = self.call_id,
        );
        for route in routes {
            text.push_str(&format!("Route: {}\n", route.trim()));
        }
        text.push('\n');
        request(&text)
    }
}

/// The callee's answer to a relayed request: our To tag, our Contact, the Record-Route
/// copied (RFC 3261 12.1.1), and an SDP answer for a 2xx to an INVITE.
fn callee_reply(callee: &TestUa, request: &Request, status: u16) -> Response {
    let mut response = Response::to_request(request, status, None);
    let to = response.headers.to().expect("To");
    if to.tag().is_none() {
        response
            .headers
            .set(HeaderName::To, to.with_tag("callee-tag").to_string());
    }
    for route in request.headers.get_all(&HeaderName::RecordRoute) {
        response.headers.push(HeaderName::RecordRoute, route);
    }
    response.headers.push(
        HeaderName::Contact,
        format!("<sip:callee@{}>", callee.local_addr()),
    );
    if request.method == Method::Invite && (200..300).contains(&status) {
        response
            .headers
            .push(HeaderName::ContentType, "application/sdp");
        response.body = sdp(callee.local_addr(), 2).into();
    }
    response
}

/// The first request the callee receives, which must be `method` of the call `call_id`
/// (so an earlier request relayed by mistake fails here).
async fn callee_receives(
    callee: &mut TestUa,
    method: Method,
    call_id: &str,
    carrier: &Carrier,
) -> (Request, SocketAddr) {
    let Some((message, from)) = callee.try_recv(sip_tests::DEFAULT_WAIT).await else {
        panic!(
            "the callee received no {method} within {:?}\ncarrier log:\n{}",
            sip_tests::DEFAULT_WAIT,
            carrier.log()
        );
    };
    let sip_core::Message::Request(request) = message else {
        panic!("the callee expected {method}, got a response");
    };
    assert_eq!(request.method, method, "what the callee received first");
    assert_eq!(
        request.headers.call_id(),
        Some(call_id),
        "the callee's first {method} is of another call"
    );
    (request, from)
}

/// Receives responses on the trunk until a final one (100 Trying skipped) and returns it.
async fn final_response(trunk: &mut TestUa, carrier: &Carrier) -> Response {
    loop {
        let Some((message, _)) = trunk.try_recv(sip_tests::DEFAULT_WAIT).await else {
            panic!(
                "no final response within {:?}\ncarrier log:\n{}",
                sip_tests::DEFAULT_WAIT,
                carrier.log()
            );
        };
        match message {
            sip_core::Message::Response(response) if response.status >= 200 => return response,
            sip_core::Message::Response(_) => {}
            sip_core::Message::Request(request) => {
                panic!("the trunk expected a response, got {}", request.method)
            }
        }
    }
}

/// The whole call through the carrier over the trunk's transport: an INVITE without
/// credentials is challenged with 407 (and not relayed), the answer to the challenge is
/// relayed to the callee with the carrier's Record-Route and without the credentials, and the
/// dialog's ACK and BYE follow the recorded route.
async fn call_through_carrier(trunk_ua: impl FnOnce(SocketAddr) -> TrunkUa, algorithm: Algorithm) {
    let (carrier, mut callee) = carrier_and_callee(|o| o.algorithm = algorithm).await;
    let options = carrier.options().clone();
    let mut trunk = Trunk::new(trunk_ua(carrier.addr()).await, &options.username);

    // No credentials: 407 from Kamailio itself, with a qop=auth challenge for the From domain.
    let invite = trunk.invite("15550001", None);
    trunk.ua.send(invite.clone()).await;
    let challenged = final_response(&mut trunk.ua, &carrier).await;
    assert_eq!(challenged.status, 407, "{}", carrier.log());
    let mut challenge = parse_challenge(
        header(&challenged, "Proxy-Authenticate", &carrier),
        CALLER_DOMAIN,
        algorithm,
    );
    trunk
        .ua
        .send(build_ack_for_non_2xx(&invite, &challenged))
        .await;

    // The answer: same Call-ID and From tag, next CSeq, Proxy-Authorization.
    let mut credentials = |request: &Request| {
        answer(
            &mut challenge,
            request,
            &options.username,
            &options.password,
        )
    };
    let invite = trunk.invite("15550001", Some(&mut credentials));
    trunk.ua.send(invite.clone()).await;
    let (relayed, carrier_from) =
        callee_receives(&mut callee, Method::Invite, &trunk.call_id, &carrier).await;
    assert_eq!(relayed.headers.cseq().expect("CSeq").seq, 2);
    assert_eq!(
        relayed.uri.as_str(),
        invite.uri.as_str(),
        "Request-URI kept"
    );
    let record_routes: Vec<_> = relayed.headers.record_routes().expect("Record-Route");
    assert!(
        !record_routes.is_empty()
            && record_routes
                .iter()
                .all(|rr| rr.uri.port() == Some(carrier.addr().port())
                    && rr.uri.params().contains("lr")),
        "the carrier record-routes: {record_routes:?}"
    );
    assert!(
        !relayed
            .headers
            .contains(&HeaderName::parse("Proxy-Authorization")),
        "credentials are consumed by the carrier"
    );
    assert_eq!(
        relayed
            .headers
            .max_forwards()
            .expect("Max-Forwards")
            .expect("number"),
        69
    );

    // The callee answers; the 2xx reaches the trunk through the carrier.
    callee
        .send_to(callee_reply(&callee, &relayed, 200), carrier_from)
        .await;
    let answered = final_response(&mut trunk.ua, &carrier).await;
    assert_eq!(answered.status, 200, "{}", carrier.log());
    assert!(answered.headers.to().expect("To").tag().is_some());

    // ACK and BYE follow the route set.
    let ack = trunk.in_dialog(Method::Ack, &invite, &answered);
    trunk.ua.send(ack).await;
    callee_receives(&mut callee, Method::Ack, &trunk.call_id, &carrier).await;
    let bye = trunk.in_dialog(Method::Bye, &invite, &answered);
    trunk.ua.send(bye).await;
    let (bye, from) = callee_receives(&mut callee, Method::Bye, &trunk.call_id, &carrier).await;
    callee.send_to(callee_reply(&callee, &bye, 200), from).await;
    let done = final_response(&mut trunk.ua, &carrier).await;
    assert_eq!(done.status, 200);
    assert_eq!(done.headers.cseq().expect("CSeq").method, Method::Bye);
}

/// A future that makes the trunk's UA for a carrier address (UDP or TCP).
type TrunkUa = std::pin::Pin<Box<dyn std::future::Future<Output = TestUa>>>;

fn udp(carrier: SocketAddr) -> TrunkUa {
    Box::pin(TestUa::udp(carrier))
}

fn tcp(carrier: SocketAddr) -> TrunkUa {
    Box::pin(TestUa::tcp(carrier))
}

#[tokio::test]
async fn invite_is_challenged_then_relayed_over_udp() {
    call_through_carrier(udp, Algorithm::Md5).await;
}

#[tokio::test]
async fn invite_is_challenged_then_relayed_over_tcp() {
    call_through_carrier(tcp, Algorithm::Md5).await;
}

#[tokio::test]
async fn sha256_invite_challenge_is_answered_and_relayed() {
    call_through_carrier(udp, Algorithm::Sha256).await;
}

/// A wrong password is refused by the carrier itself (a new 407, or 403) and never relayed:
/// the first INVITE the callee sees is the next, correctly answered call.
#[tokio::test]
async fn wrong_password_is_refused_and_not_relayed() {
    let (carrier, mut callee) = carrier_and_callee(|_| {}).await;
    let options = carrier.options().clone();
    let mut trunk = Trunk::new(TestUa::udp(carrier.addr()).await, &options.username);

    let invite = trunk.invite("15550002", None);
    trunk.ua.send(invite.clone()).await;
    let challenged = final_response(&mut trunk.ua, &carrier).await;
    assert_eq!(challenged.status, 407);
    trunk
        .ua
        .send(build_ack_for_non_2xx(&invite, &challenged))
        .await;
    let mut challenge = parse_challenge(
        header(&challenged, "Proxy-Authenticate", &carrier),
        CALLER_DOMAIN,
        Algorithm::Md5,
    );

    let mut wrong = |request: &Request| {
        answer(
            &mut challenge,
            request,
            &options.username,
            "not-the-password",
        )
    };
    let invite = trunk.invite("15550002", Some(&mut wrong));
    trunk.ua.send(invite.clone()).await;
    let refused = final_response(&mut trunk.ua, &carrier).await;
    assert!(
        matches!(refused.status, 403 | 407),
        "a wrong password gets 403 or 407, not {} {}\n{}",
        refused.status,
        refused.reason,
        carrier.log()
    );
    if refused.status == 407 {
        // A fresh challenge, as a client that gives up after one try must expect.
        parse_challenge(
            header(&refused, "Proxy-Authenticate", &carrier),
            CALLER_DOMAIN,
            Algorithm::Md5,
        );
    }
    trunk
        .ua
        .send(build_ack_for_non_2xx(&invite, &refused))
        .await;

    // The next call, answered correctly, is what reaches the callee first.
    trunk.next_call();
    let mut right = |request: &Request| {
        answer(
            &mut challenge,
            request,
            &options.username,
            &options.password,
        )
    };
    let invite = trunk.invite("15550003", Some(&mut right));
    trunk.ua.send(invite).await;
    let (relayed, from) =
        callee_receives(&mut callee, Method::Invite, &trunk.call_id, &carrier).await;
    callee
        .send_to(callee_reply(&callee, &relayed, 486), from)
        .await;
    let busy = final_response(&mut trunk.ua, &carrier).await;
    assert_eq!(busy.status, 486);
}

/// REGISTER over `transport`: 401 without credentials, and again for a wrong password; the
/// right answer registers the AOR (the probe says so); a REGISTER with Expires: 0, answering
/// the same challenge with the next nonce count, removes it.
async fn registration(trunk_ua: impl FnOnce(SocketAddr) -> TrunkUa, algorithm: Algorithm) {
    let (carrier, _callee) = carrier_and_callee(|o| {
        o.username = "2001".to_owned();
        o.algorithm = algorithm;
    })
    .await;
    let options = carrier.options().clone();
    let mut trunk = Trunk::new(trunk_ua(carrier.addr()).await, "2001");
    assert!(!carrier.is_registered("2001").await);

    let register = trunk.register("2001", 300, None);
    trunk.ua.send(register).await;
    let challenged = final_response(&mut trunk.ua, &carrier).await;
    assert_eq!(challenged.status, 401, "{}", carrier.log());
    let mut challenge = parse_challenge(
        header(&challenged, "WWW-Authenticate", &carrier),
        REGISTRAR_DOMAIN,
        algorithm,
    );
    assert!(!carrier.is_registered("2001").await);

    // A wrong password is challenged again and registers nothing: the carrier does check
    // the answer with this algorithm, not merely its presence.
    let mut wrong = |request: &Request| {
        answer(
            &mut challenge,
            request,
            &options.username,
            "not-the-password",
        )
    };
    let register = trunk.register("2001", 300, Some(&mut wrong));
    trunk.ua.send(register).await;
    let refused = final_response(&mut trunk.ua, &carrier).await;
    assert!(
        matches!(refused.status, 401 | 403),
        "a wrong password gets 401 or 403, not {} {}\n{}",
        refused.status,
        refused.reason,
        carrier.log()
    );
    assert!(!carrier.is_registered("2001").await);

    let mut credentials = |request: &Request| {
        answer(
            &mut challenge,
            request,
            &options.username,
            &options.password,
        )
    };
    let register = trunk.register("2001", 300, Some(&mut credentials));
    trunk.ua.send(register).await;
    let registered = final_response(&mut trunk.ua, &carrier).await;
    assert_eq!(registered.status, 200, "{}", carrier.log());
    let contacts = registered.headers.contacts().expect("Contact of the 200");
    assert_eq!(contacts.len(), 1, "the one binding: {contacts:?}");
    assert_eq!(contacts[0].uri.port(), Some(trunk.ua.local_addr().port()));
    assert!(carrier.is_registered("2001").await, "{}", carrier.log());
    assert!(!carrier.is_registered("2002").await, "another AOR is not");

    let unregister = trunk.register("2001", 0, Some(&mut credentials));
    trunk.ua.send(unregister).await;
    let removed = final_response(&mut trunk.ua, &carrier).await;
    assert_eq!(removed.status, 200, "{}", carrier.log());
    assert!(!carrier.is_registered("2001").await, "{}", carrier.log());
}

#[tokio::test]
async fn register_is_challenged_saved_and_removed_over_udp() {
    registration(udp, Algorithm::Md5).await;
}

#[tokio::test]
async fn register_is_challenged_saved_and_removed_over_tcp() {
    registration(tcp, Algorithm::Md5).await;
}

#[tokio::test]
async fn sha256_register_challenge_is_answered() {
    registration(udp, Algorithm::Sha256).await;
}

/// A trunk that trusts its peer by address: no challenge for INVITE or REGISTER, and a
/// keepalive OPTIONS (no user part) over TCP gets 200.
#[tokio::test]
async fn unchallenged_trunk_relays_and_registers_directly() {
    let (carrier, mut callee) = carrier_and_callee(|o| {
        o.challenge_invite = false;
        o.challenge_register = false;
    })
    .await;
    let mut trunk = Trunk::new(TestUa::tcp(carrier.addr()).await, "2001");

    trunk
        .ua
        .send(request(&format!(
            "OPTIONS sip:{carrier} SIP/2.0\n\
         Via: {via}\n\
         Max-Forwards: 70\n\
         From: <sip:2001@{CALLER_DOMAIN}>;tag=keepalive\n\
         To: <sip:{carrier}>\n\
         Call-ID: keepalive-{call_id}\n\
         CSeq: 1 OPTIONS\n\n",
            carrier = carrier.addr(),
            via = trunk.via(),
            call_id = trunk.call_id,
        )))
        .await;
    assert_eq!(final_response(&mut trunk.ua, &carrier).await.status, 200);

    let register = trunk.register("2001", 300, None);
    trunk.ua.send(register).await;
    assert_eq!(final_response(&mut trunk.ua, &carrier).await.status, 200);
    assert!(carrier.is_registered("2001").await);

    trunk.next_call();
    let invite = trunk.invite("15550004", None);
    trunk.ua.send(invite).await;
    let (relayed, from) =
        callee_receives(&mut callee, Method::Invite, &trunk.call_id, &carrier).await;
    assert!(relayed
        .headers
        .record_routes()
        .is_ok_and(|rr| !rr.is_empty()));
    callee
        .send_to(callee_reply(&callee, &relayed, 486), from)
        .await;
    assert_eq!(final_response(&mut trunk.ua, &carrier).await.status, 486);
}

/// With `tls`, the carrier also listens on TLS with a certificate its own CA signed for its
/// address: a client trusting that CA (as callbridge's `tls.ca_file` will) gets its keepalive
/// answered and its INVITE challenged over TLS; a client trusting another CA gets no
/// connection at all.
#[tokio::test]
async fn the_carrier_speaks_tls_with_a_certificate_of_its_own_ca() {
    let (carrier, _callee) = carrier_and_callee(|o| o.tls = true).await;
    assert_ne!(carrier.tls_addr(), carrier.addr());
    let trusting = sip_tests::tls::client_config_from_ca_file(carrier.ca_file());
    let mut trunk = Trunk::new(TestUa::tls(carrier.tls_addr(), trusting).await, "2001");
    trunk
        .ua
        .send(request(&format!(
            "OPTIONS sip:{carrier} SIP/2.0\n\
         Via: {via}\n\
         Max-Forwards: 70\n\
         From: <sip:2001@{CALLER_DOMAIN}>;tag=keepalive\n\
         To: <sip:{carrier}>\n\
         Call-ID: keepalive-{call_id}\n\
         CSeq: 1 OPTIONS\n\n",
            carrier = carrier.tls_addr(),
            via = trunk.via(),
            call_id = trunk.call_id,
        )))
        .await;
    assert_eq!(final_response(&mut trunk.ua, &carrier).await.status, 200);
    let invite = trunk.invite("15550005", None);
    trunk.ua.send(invite.clone()).await;
    let challenged = final_response(&mut trunk.ua, &carrier).await;
    assert_eq!(challenged.status, 407, "{}", carrier.log());
    trunk
        .ua
        .send(build_ack_for_non_2xx(&invite, &challenged))
        .await;
    assert!(
        carrier.log().contains("over tls"),
        "the carrier logs the transport: {}",
        carrier.log()
    );

    // Another CA's client does not get through the handshake.
    let dir = tempfile::tempdir().expect("temporary directory");
    let stranger = sip_tests::tls::TestPki::new(dir.path(), "stranger", "some other CA");
    let refused = sip_tests::tls::connect(carrier.tls_addr(), stranger.client_config()).await;
    let error = refused.expect_err("a certificate of an unknown CA is refused");
    assert!(error.to_string().contains("UnknownIssuer"), "{error}");
}
