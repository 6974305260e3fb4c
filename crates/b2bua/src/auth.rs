//! Digest authentication toward the trunk (RFC 3261 §22.2, RFC 7616, RFC 8760): what
//! callbridge adds to a request the trunk challenged with 401 (`WWW-Authenticate`) or 407
//! (`Proxy-Authenticate`), and when it stops trying.
//!
//! Sans-IO like the engine: it reads a challenge and writes a request. The hashing and the
//! challenge parsing are the `digest_auth` crate's; this module adds what SIP needs around it
//! (the header pairs, the SIP method and Request-URI as digest `method` and `uri`, one answer
//! per realm, the strongest algorithm offered, `qop=auth`) and the retry rule:
//!
//! - a request sent without credentials is answered once;
//! - a request that carried credentials and is challenged again was refused: it is answered
//!   again only when every challenge says `stale=true` (the credentials were right, the nonce
//!   had expired; RFC 7616 §3.3), and at most [`MAX_ROUNDS`] times in all, so that a trunk
//!   that keeps challenging cannot make callbridge loop.

use std::fmt;

use digest_auth::{AlgorithmType, AuthContext, HttpMethod, Qop, WwwAuthenticateHeader};
use sip_core::{HeaderName, Request, Response};

/// Requests of one chain (a request and its re-sends with credentials) at most: the first
/// answer plus two for stale nonces.
pub const MAX_ROUNDS: u8 = 3;

/// Digest credentials for the trunk (`trunk.username`, `trunk.password`).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

/// The password never reaches a log line.
impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Why a challenged request is not sent again; the call's leg fails with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    #[error("the trunk asked for credentials and none are configured (trunk.username)")]
    NoCredentials,
    #[error("the trunk's challenge is not a usable digest challenge (MD5 or SHA-256)")]
    NoUsableChallenge,
    #[error("the trunk refused the credentials (trunk.username, trunk.password)")]
    Rejected,
    #[error("the trunk kept challenging after {MAX_ROUNDS} answers")]
    TooManyRounds,
}

/// One challenge of a 401/407 that callbridge can answer.
#[derive(Clone, Debug)]
struct Challenge {
    /// `Authorization` (for `WWW-Authenticate`) or `Proxy-Authorization`.
    answer_header: HeaderName,
    prompt: WwwAuthenticateHeader,
}

fn www_authenticate() -> HeaderName {
    HeaderName::parse("WWW-Authenticate")
}

fn proxy_authenticate() -> HeaderName {
    HeaderName::parse("Proxy-Authenticate")
}

fn authorization() -> HeaderName {
    HeaderName::parse("Authorization")
}

fn proxy_authorization() -> HeaderName {
    HeaderName::parse("Proxy-Authorization")
}

/// Whether `request` already carries credentials (it is a re-send after a challenge).
pub fn has_credentials(request: &Request) -> bool {
    request.headers.contains(&authorization()) || request.headers.contains(&proxy_authorization())
}

/// The request to send again after `response` (a 401 or 407 to `sent`), with credentials
/// answering its challenges; `rounds` is how many times this request was already re-sent
/// with credentials. The copy has no Via (the transaction layer adds one with a new branch)
/// and `sent`'s CSeq: the caller sets the next number of its dialog.
pub fn answer(
    sent: &Request,
    response: &Response,
    credentials: Option<&Credentials>,
    rounds: u8,
) -> Result<Request, AuthFailure> {
    let mut request = sent.clone();
    request.headers.remove_all(&HeaderName::Via);
    answer_into(
        &mut request,
        has_credentials(sent),
        response,
        credentials,
        rounds,
    )?;
    Ok(request)
}

/// Like [`answer`], for a request built afresh (a BYE from its dialog, a REGISTER refresh):
/// `request` gets the credentials, replacing any it had; `sent_with_credentials` says whether
/// the challenged request carried some.
pub fn answer_into(
    request: &mut Request,
    sent_with_credentials: bool,
    response: &Response,
    credentials: Option<&Credentials>,
    rounds: u8,
) -> Result<(), AuthFailure> {
    let credentials = credentials.ok_or(AuthFailure::NoCredentials)?;
    let mut challenges = usable_challenges(response);
    if challenges.is_empty() {
        return Err(AuthFailure::NoUsableChallenge);
    }
    if sent_with_credentials && !challenges.iter().all(|c| c.prompt.stale) {
        return Err(AuthFailure::Rejected);
    }
    if rounds >= MAX_ROUNDS {
        return Err(AuthFailure::TooManyRounds);
    }
    request.headers.remove_all(&authorization());
    request.headers.remove_all(&proxy_authorization());
    let uri = request.uri.to_string();
    let method = request.method.to_string();
    let mut answers = Vec::with_capacity(challenges.len());
    for challenge in &mut challenges {
        let context = AuthContext::new_with_method(
            credentials.username.as_str(),
            credentials.password.as_str(),
            uri.as_str(),
            Some(request.body.as_ref()),
            HttpMethod::from(method.as_str()),
        );
        let value = challenge
            .prompt
            .respond(&context)
            .map_err(|_| AuthFailure::NoUsableChallenge)?;
        answers.push((challenge.answer_header.clone(), value.to_header_string()));
    }
    for (name, value) in answers {
        request.headers.push(name, value);
    }
    Ok(())
}

/// The challenges of `response` worth answering: digest ones with an algorithm this side
/// computes, one per realm, the strongest offered (SHA-256 before MD5, RFC 8760 §2.4), with
/// `qop=auth` chosen whenever it is offered (auth-int hashes the body, which a B2BUA that
/// rewrites SDP gains nothing from).
fn usable_challenges(response: &Response) -> Vec<Challenge> {
    let (challenge_header, answer_header) = match response.status {
        401 => (www_authenticate(), authorization()),
        407 => (proxy_authenticate(), proxy_authorization()),
        _ => return Vec::new(),
    };
    let mut chosen: Vec<Challenge> = Vec::new();
    // A response with thousands of challenges is hostile; a few cover every real trunk.
    for value in response.headers.get_all(&challenge_header).take(8) {
        let Some(mut prompt) = parse_digest(value) else {
            continue;
        };
        if prompt.algorithm.algo == AlgorithmType::SHA2_512_256 || prompt.userhash {
            continue;
        }
        if let Some(qops) = &mut prompt.qop {
            if qops.contains(&Qop::AUTH) {
                qops.retain(|q| *q == Qop::AUTH);
            }
        }
        match chosen.iter_mut().find(|c| c.prompt.realm == prompt.realm) {
            Some(existing) if strength(&prompt) > strength(&existing.prompt) => {
                existing.prompt = prompt;
            }
            Some(_) => {}
            None => chosen.push(Challenge {
                answer_header: answer_header.clone(),
                prompt,
            }),
        }
    }
    chosen
}

fn strength(prompt: &WwwAuthenticateHeader) -> u8 {
    match prompt.algorithm.algo {
        AlgorithmType::MD5 => 1,
        AlgorithmType::SHA2_256 => 2,
        AlgorithmType::SHA2_512_256 => 0,
    }
}

/// A `Digest` challenge (the scheme compared case-insensitively, as RFC 3261 §25.1 wants);
/// `None` for any other scheme or a challenge the parser refuses.
fn parse_digest(value: &str) -> Option<WwwAuthenticateHeader> {
    let value = value.trim_start();
    let scheme = value.get(..6)?;
    if !scheme.eq_ignore_ascii_case("digest") {
        return None;
    }
    let rest = value.get(6..)?;
    if !rest.starts_with([' ', '\t']) {
        return None;
    }
    // digest_auth 0.3.1 slices its input by character positions as if they were byte
    // offsets: a non-ASCII challenge (a UTF-8 realm, say) could make it panic, and a panic
    // on the SIP task ends the process. Such a challenge is refused here instead.
    if !rest.is_ascii() {
        return None;
    }
    WwwAuthenticateHeader::parse(rest).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sip_core::{Message, Method};

    fn credentials() -> Credentials {
        Credentials {
            username: "2001".into(),
            password: "secret".into(),
        }
    }

    fn invite() -> Request {
        let text = "INVITE sip:3001@127.0.0.1:5080 SIP/2.0\r\n\
            Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKfirst;rport\r\n\
            From: <sip:2001@127.0.0.1>;tag=a\r\n\
            To: <sip:3001@127.0.0.1:5080>\r\n\
            Call-ID: c1\r\n\
            CSeq: 1 INVITE\r\n\
            Max-Forwards: 70\r\n\
            Content-Length: 0\r\n\r\n";
        match Message::parse(text.as_bytes(), &sip_core::ParseLimits::default()).unwrap() {
            Message::Request(r) => r,
            _ => unreachable!(),
        }
    }

    fn challenge(status: u16, values: &[&str]) -> Response {
        let mut response = Response::to_request(&invite(), status, None);
        let name = if status == 401 {
            www_authenticate()
        } else {
            proxy_authenticate()
        };
        for value in values {
            response.headers.push(name.clone(), *value);
        }
        response
    }

    /// RFC 7616 §3.9.1's example, answered with its own cnonce: the crate computes the
    /// published responses for both algorithms (the test vector of the RFC, not ours).
    #[test]
    fn rfc7616_example_responses() {
        let cases = [
            ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
            (
                "SHA-256",
                "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
            ),
        ];
        for (algorithm, expected) in cases {
            let mut prompt = WwwAuthenticateHeader::parse(&format!(
                "realm=\"http-auth@example.org\", qop=\"auth, auth-int\", \
                 algorithm={algorithm}, nonce=\"7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v\", \
                 opaque=\"FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\""
            ))
            .unwrap();
            prompt.qop = Some(vec![Qop::AUTH]);
            let mut context = AuthContext::new("Mufasa", "Circle of Life", "/dir/index.html");
            context.set_custom_cnonce("f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ");
            let answer = prompt.respond(&context).unwrap();
            assert_eq!(answer.response, expected, "{algorithm}");
            assert_eq!(answer.nc, 1);
        }
    }

    #[test]
    fn first_challenge_answered_with_the_sip_method_and_uri() {
        let response = challenge(
            407,
            &["Digest realm=\"carrier\", nonce=\"n1\", qop=\"auth,auth-int\", algorithm=MD5"],
        );
        let retry = answer(&invite(), &response, Some(&credentials()), 0).unwrap();
        assert!(
            !retry.headers.contains(&HeaderName::Via),
            "a new branch is the layer's"
        );
        assert_eq!(retry.method, Method::Invite);
        let value = retry.headers.get(&proxy_authorization()).unwrap();
        assert!(value.starts_with("Digest "), "{value}");
        for part in [
            "username=\"2001\"",
            "realm=\"carrier\"",
            "nonce=\"n1\"",
            "uri=\"sip:3001@127.0.0.1:5080\"",
            "qop=auth",
            "nc=00000001",
        ] {
            assert!(value.contains(part), "{part} missing in {value}");
        }
        // The response checks out against the RFC 2617 formula computed here by hand.
        let cnonce = value
            .split("cnonce=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap();
        let md5 = |s: String| digest_auth::Algorithm::new(AlgorithmType::MD5, false).hash_str(&s);
        let ha1 = md5("2001:carrier:secret".into());
        let ha2 = md5("INVITE:sip:3001@127.0.0.1:5080".into());
        let expected = md5(format!("{ha1}:n1:00000001:{cnonce}:auth:{ha2}"));
        assert!(
            value.contains(&format!("response=\"{expected}\"")),
            "{value}"
        );
        assert!(!retry.headers.contains(&authorization()));
    }

    #[test]
    fn strongest_algorithm_per_realm_and_one_answer_per_realm() {
        let response = challenge(
            401,
            &[
                "Digest realm=\"a\", nonce=\"1\", algorithm=MD5, qop=\"auth\"",
                "digest realm=\"a\", nonce=\"2\", algorithm=SHA-256, qop=\"auth\"",
                "Digest realm=\"b\", nonce=\"3\"",
                "Basic realm=\"c\"",
            ],
        );
        let retry = answer(&invite(), &response, Some(&credentials()), 0).unwrap();
        let name = authorization();
        let answers: Vec<&str> = retry.headers.get_all(&name).collect();
        assert_eq!(answers.len(), 2, "{answers:?}");
        assert!(answers[0].contains("algorithm=SHA-256") && answers[0].contains("nonce=\"2\""));
        assert!(answers[1].contains("realm=\"b\""));
    }

    #[test]
    fn refused_credentials_end_the_attempts_unless_the_nonce_was_stale() {
        let first = challenge(407, &["Digest realm=\"r\", nonce=\"n1\", qop=\"auth\""]);
        let retry = answer(&invite(), &first, Some(&credentials()), 0).unwrap();
        // Challenged again, not stale: the password is wrong, whatever the nonce.
        let again = challenge(407, &["Digest realm=\"r\", nonce=\"n2\", qop=\"auth\""]);
        assert_eq!(
            answer(&retry, &again, Some(&credentials()), 1).unwrap_err(),
            AuthFailure::Rejected
        );
        let stale = challenge(
            407,
            &["Digest realm=\"r\", nonce=\"n3\", qop=\"auth\", stale=true"],
        );
        let second = answer(&retry, &stale, Some(&credentials()), 1).unwrap();
        assert_eq!(second.headers.get_all(&proxy_authorization()).count(), 1);
        assert!(second
            .headers
            .get(&proxy_authorization())
            .unwrap()
            .contains("nonce=\"n3\""));
        assert_eq!(
            answer(&second, &stale, Some(&credentials()), MAX_ROUNDS).unwrap_err(),
            AuthFailure::TooManyRounds
        );
    }

    #[test]
    fn unanswerable_challenges() {
        let response = challenge(407, &["Digest realm=\"r\", nonce=\"n\""]);
        assert_eq!(
            answer(&invite(), &response, None, 0).unwrap_err(),
            AuthFailure::NoCredentials
        );
        for hostile in [
            "",
            "Digest",
            "Digest ",
            "Digest realm",
            "Digest realm=\"unterminated",
            "Digest nonce=\"n\"",
            "Digest realm=\"r\", nonce=\"n\", algorithm=SHA-512-256",
            "Digest realm=\"r\", nonce=\"n\", algorithm=ROT13",
            "Digest realm=\"r\", nonce=\"n\", qop=\"bogus\"",
            "Digestrealm=\"r\", nonce=\"n\"",
            "Dïgest realm=\"r\", nonce=\"n\"",
            "Digest ,,,,===\"\"\"",
            // Non-ASCII: refused before the parser, which would slice it by char positions.
            "Digest realm=\"résumé\", nonce=\"n\"",
            "Digest realm=\"日本\", nonce=\"ñ\", qop=\"auth\"",
            "Digest ü=\"x\", realm=\"r\", nonce=\"n\"",
        ] {
            let response = challenge(401, &[hostile]);
            assert_eq!(
                answer(&invite(), &response, Some(&credentials()), 0).unwrap_err(),
                AuthFailure::NoUsableChallenge,
                "{hostile:?}"
            );
        }
        // A 401 carrying Proxy-Authenticate (the wrong pair) is not answered either.
        let mut wrong = challenge(401, &[]);
        wrong
            .headers
            .push(proxy_authenticate(), "Digest realm=\"r\", nonce=\"n\"");
        assert!(answer(&invite(), &wrong, Some(&credentials()), 0).is_err());
    }

    #[test]
    fn password_not_in_debug_output() {
        let text = format!("{:?}", credentials());
        assert!(text.contains("2001") && !text.contains("secret"));
    }
}
