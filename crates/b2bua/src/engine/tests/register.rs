//! callbridge's registration at the trunk, driven by the engine ([`crate::engine::register`]).

use super::*;
use crate::auth::Credentials;
use crate::registration::{RegistrationConfig, RegistrationState};
use sip_core::Uri;

fn registering() -> Harness {
    Harness::configured(|c| {
        c.registration = Some(RegistrationConfig {
            registrar_host: "127.0.0.1".into(),
            registrar_port: Some(5080),
            credentials: Credentials {
                username: "2001".into(),
                password: "secret".into(),
            },
            contact: Uri::sip(Some("2001"), "127.0.0.1", Some(5060)),
            expires: Duration::from_secs(300),
            agent: None,
        })
    })
}

#[test]
fn registers_through_a_challenge_refreshes_and_unregisters_at_shutdown() {
    let mut h = registering();
    assert_eq!(
        h.engine.registration_state(),
        None,
        "not before it is started"
    );
    h.engine.start_registration(h.now);
    let sent = h.sent();
    assert_eq!(methods(&sent, trunk()), ["REGISTER"]);
    let first = find_request(&sent, "REGISTER");
    let Message::Response(mut challenge) = answer(&first, 401, "reg", "") else {
        unreachable!()
    };
    challenge.headers.push(
        HeaderName::parse("WWW-Authenticate"),
        "Digest realm=\"127.0.0.1\", nonce=\"r1\", qop=\"auth\"",
    );
    h.feed(&Message::Response(challenge), trunk());
    let with_credentials = find_request(&h.sent(), "REGISTER");
    assert!(with_credentials
        .headers
        .contains(&HeaderName::parse("Authorization")));
    // A call meanwhile is unaffected by the registration's transactions.
    let (callid, b_invite) = start_call(&mut h, SDP_A);
    let Message::Response(mut ok) = answer(&with_credentials, 200, "reg", "") else {
        unreachable!()
    };
    ok.headers.set(HeaderName::Expires, "300");
    h.feed(&Message::Response(ok), trunk());
    assert!(matches!(
        h.engine.registration_state(),
        Some(RegistrationState::Registered { .. })
    ));
    callee_refuses(&mut h, &b_invite, "z9hG4bKa1");
    assert_eq!(
        h.control.call(&callid).unwrap().end_cause,
        Some(EndCause::CalleeRejected)
    );
    // Refreshed a minute before the 300 s lapse.
    h.advance(Duration::from_secs(239));
    assert!(methods(&h.sent(), trunk()).is_empty());
    h.advance(Duration::from_secs(1));
    let refresh = find_request(&h.sent(), "REGISTER");
    assert_eq!(refresh.headers.call_id(), first.headers.call_id());
    h.feed(&answer(&refresh, 200, "reg", ""), trunk());
    // Shutdown: the binding is removed.
    h.engine.start_drain(h.now);
    let removal = find_request(&h.sent(), "REGISTER");
    assert_eq!(removal.headers.get(&HeaderName::Expires), Some("0"));
    h.feed(&answer(&removal, 200, "reg", ""), trunk());
    assert_eq!(
        h.engine.registration_state(),
        Some(RegistrationState::Unregistered)
    );
    assert_eq!(h.engine.registration_stats().unwrap().accepted, 2);
    h.assert_drained();
}

#[test]
fn an_unanswered_register_is_retried_after_a_backoff() {
    let mut h = registering();
    h.engine.start_registration(h.now);
    h.sent();
    // Timer F (64·T1) passes with no answer; retransmissions go meanwhile.
    h.advance(Duration::from_secs(33));
    assert!(matches!(
        h.engine.registration_state(),
        Some(RegistrationState::Failed { .. })
    ));
    h.sent();
    // Failed at 32 s (Timer F); the retry is 5 s later.
    h.advance(Duration::from_secs(3));
    assert!(h.sent().is_empty(), "nothing before the backoff is over");
    h.advance(Duration::from_secs(1));
    let retry = find_request(&h.sent(), "REGISTER");
    assert_eq!(retry.headers.cseq().unwrap().seq, 2);
}
