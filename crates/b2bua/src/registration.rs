//! callbridge's registration at the trunk (`trunk.register`, RFC 3261 §10): many carriers
//! route calls to a SIP account only while it is registered, and accept calls from it only
//! then.
//!
//! [`Registration`] is a sans-IO state machine like the engine it lives in: it says when a
//! REGISTER is due ([`Registration::poll_timeout`]) and builds it
//! ([`Registration::poll_request`]); the engine sends it through its transaction layer and
//! feeds back the answer ([`Registration::on_response`]) or the failure
//! ([`Registration::on_failure`]). It keeps one Call-ID and increasing CSeq numbers for every
//! REGISTER of the binding (RFC 3261 §10.2.4), answers 401/407 through [`crate::auth`],
//! follows 423's `Min-Expires`, refreshes before the binding expires, retries failures with
//! a growing backoff (never a tight loop, whatever the trunk says) and removes the binding
//! (`Expires: 0`) at shutdown.

use std::time::{Duration, Instant};

use sip_core::transaction::ClientTxId;
use sip_core::{ids, HeaderName, Method, NameAddr, Request, Response, Uri};

use crate::auth::{self, AuthFailure, Credentials};

/// The first wait after a failed attempt; doubled after each further failure.
const BACKOFF_BASE: Duration = Duration::from_secs(5);
/// The longest wait between two attempts.
const BACKOFF_CAP: Duration = Duration::from_secs(300);
/// The shortest binding asked for after a 423 (RFC 3261 §10.2.8 says 60 s is reasonable).
const MIN_EXPIRES_FLOOR: u32 = 60;
/// The longest a 423's Min-Expires is followed to (one day).
const MAX_EXPIRES: u32 = 86_400;

/// What the registration needs to know.
#[derive(Clone, Debug)]
pub struct RegistrationConfig {
    /// The registrar's host (the trunk's address as configured: a name or an IP) and port:
    /// the Request-URI, and the domain of the address-of-record.
    pub registrar_host: String,
    /// `None` for a domain resolved through SRV: the Request-URI then names the domain alone.
    pub registrar_port: Option<u16>,
    /// The account: user part of the address-of-record, and the digest credentials.
    pub credentials: Credentials,
    /// Where the trunk reaches callbridge (`sip:user@public_addr:port`, with `;transport=`
    /// over TCP).
    pub contact: Uri,
    /// The binding's lifetime asked for (`trunk.register_expires_secs`).
    pub expires: Duration,
    /// `User-Agent`, when `sip.server_header` is set.
    pub agent: Option<String>,
}

/// Where the registration stands, for `/healthz`, `/metrics` and the logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegistrationState {
    /// A REGISTER is on its way (the first one, or after a failure).
    Registering,
    /// The trunk accepted the binding until `expires_at`; refreshed before.
    Registered { expires_at: Instant },
    /// The last attempt failed; the next is at `retry_at`.
    Failed {
        retry_at: Instant,
        failure: RegistrationFailure,
    },
    /// The binding was removed (shutdown).
    Unregistered,
}

impl RegistrationState {
    /// The state's name in `/healthz` and the logs.
    pub fn code(self) -> &'static str {
        match self {
            RegistrationState::Registering => "registering",
            RegistrationState::Registered { .. } => "registered",
            RegistrationState::Failed { .. } => "failed",
            RegistrationState::Unregistered => "unregistered",
        }
    }
}

/// Why a REGISTER failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RegistrationFailure {
    #[error("no answer from the registrar (timeout or transport error)")]
    NoAnswer,
    #[error("the registrar answered {0}")]
    Refused(u16),
    #[error(transparent)]
    Auth(#[from] AuthFailure),
}

/// Counters of the registration, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RegistrationStats {
    /// REGISTERs the trunk accepted (2xx), refreshes included.
    pub accepted: u64,
    /// Attempts that failed (each followed by a backoff).
    pub failed: u64,
}

/// The registration of callbridge's account at the trunk. See the module documentation.
#[derive(Debug)]
pub struct Registration {
    config: RegistrationConfig,
    call_id: String,
    from_tag: String,
    cseq: u32,
    state: RegistrationState,
    /// When the next REGISTER is due (`None`: one is in flight, or the binding is removed).
    due: Option<Instant>,
    /// The transaction of the REGISTER in flight, and that REGISTER (to answer a challenge).
    in_flight: Option<(ClientTxId, Request)>,
    /// A REGISTER with credentials, built in answer to a challenge, waiting to be sent.
    ready: Option<Request>,
    /// Re-sends with credentials of the current attempt.
    auth_rounds: u8,
    /// Failed attempts in a row (the backoff grows with them).
    failures: u32,
    /// The lifetime asked for; raised by a 423.
    expires: u32,
    /// Shutting down: the next REGISTER removes the binding, and nothing follows it.
    removing: bool,
    stats: RegistrationStats,
}

impl Registration {
    /// A registration whose first REGISTER is due at `now`.
    pub fn new(config: RegistrationConfig, now: Instant) -> Registration {
        let expires = u32::try_from(config.expires.as_secs()).unwrap_or(MAX_EXPIRES);
        Registration {
            call_id: ids::new_call_id(config.contact.host()),
            from_tag: ids::new_tag(),
            cseq: 0,
            state: RegistrationState::Registering,
            due: Some(now),
            in_flight: None,
            ready: None,
            auth_rounds: 0,
            failures: 0,
            expires: expires.clamp(1, MAX_EXPIRES),
            removing: false,
            stats: RegistrationStats::default(),
            config,
        }
    }

    pub fn state(&self) -> RegistrationState {
        self.state
    }

    pub fn stats(&self) -> RegistrationStats {
        self.stats
    }

    /// When [`poll_request`](Self::poll_request) has something to send.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.in_flight.is_some() {
            return None;
        }
        self.due
    }

    /// The REGISTER to send at `now`, if one is due. The caller sends it and says on which
    /// transaction ([`sent`](Self::sent)).
    pub fn poll_request(&mut self, now: Instant) -> Option<Request> {
        if self.in_flight.is_some() {
            return None;
        }
        if let Some(ready) = self.ready.take() {
            return Some(ready);
        }
        if self.due.is_none_or(|due| due > now) {
            return None;
        }
        self.due = None;
        self.auth_rounds = 0;
        let expires = if self.removing { 0 } else { self.expires };
        Some(self.build(expires))
    }

    /// The REGISTER from [`poll_request`](Self::poll_request) went out on `tx` (as `sent`, with
    /// the Via the transaction layer added).
    pub fn sent(&mut self, tx: ClientTxId, sent: Request) {
        self.in_flight = Some((tx, sent));
    }

    /// The REGISTER could not be sent at all: tried again after a backoff.
    pub fn send_failed(&mut self, now: Instant) {
        self.fail(now, RegistrationFailure::NoAnswer);
    }

    /// Whether `tx` carries this registration's REGISTER.
    pub fn owns(&self, tx: ClientTxId) -> bool {
        self.in_flight.as_ref().is_some_and(|(t, _)| *t == tx)
    }

    /// A final response to the REGISTER in flight (provisional ones change nothing).
    pub fn on_response(&mut self, now: Instant, response: &Response) {
        if response.status < 200 {
            return;
        }
        let Some((_, sent)) = self.in_flight.take() else {
            return;
        };
        match response.status {
            200..=299 => {
                let was_removal = sent.headers.get(&HeaderName::Expires) == Some("0");
                self.accepted(now, response, was_removal);
            }
            401 | 407 => {
                let answered = auth::answer(
                    &sent,
                    response,
                    Some(&self.config.credentials),
                    self.auth_rounds,
                );
                match answered {
                    Ok(mut retry) => {
                        self.cseq = self.cseq.saturating_add(1);
                        retry
                            .headers
                            .set(HeaderName::CSeq, format!("{} REGISTER", self.cseq));
                        self.auth_rounds += 1;
                        self.ready = Some(retry);
                    }
                    Err(failure) => self.fail(now, failure.into()),
                }
            }
            423 if !self.removing => {
                // Interval Too Brief: ask again at once for what the registrar wants, within
                // reason.
                let wanted = response
                    .headers
                    .get(&HeaderName::parse("Min-Expires"))
                    .and_then(|v| v.trim().parse::<u32>().ok())
                    .filter(|&v| v > self.expires && v <= MAX_EXPIRES);
                match wanted {
                    Some(wanted) => {
                        self.expires = wanted.max(MIN_EXPIRES_FLOOR);
                        self.due = Some(now);
                    }
                    None => self.fail(now, RegistrationFailure::Refused(423)),
                }
            }
            status => self.fail(now, RegistrationFailure::Refused(status)),
        }
    }

    /// The REGISTER in flight timed out or could not be delivered.
    pub fn on_failure(&mut self, now: Instant) {
        if self.in_flight.take().is_some() {
            self.fail(now, RegistrationFailure::NoAnswer);
        }
    }

    /// Shutdown: the binding is removed with `Expires: 0` as soon as no REGISTER is in
    /// flight, and nothing is sent after that. Returns whether there was a binding to remove
    /// (or one being made).
    pub fn remove(&mut self, now: Instant) -> bool {
        if self.removing {
            return false;
        }
        self.removing = true;
        let bound = matches!(
            self.state,
            RegistrationState::Registered { .. } | RegistrationState::Registering
        );
        self.ready = None;
        self.due = bound.then_some(now);
        if !bound {
            self.state = RegistrationState::Unregistered;
        }
        bound
    }

    fn accepted(&mut self, now: Instant, response: &Response, was_removal: bool) {
        self.failures = 0;
        self.auth_rounds = 0;
        if was_removal {
            self.state = RegistrationState::Unregistered;
            self.due = None;
            tracing::info!("registration removed at the trunk");
            return;
        }
        if self.removing {
            // A binding made while the shutdown began: removed at once.
            self.due = Some(now);
            return;
        }
        self.stats.accepted += 1;
        let granted = self.granted(response);
        let lifetime = Duration::from_secs(u64::from(granted));
        // Refreshed well before it lapses: half-way for short bindings, a minute early for
        // long ones.
        let margin = (lifetime / 2).min(Duration::from_secs(60));
        let was_registered = matches!(self.state, RegistrationState::Registered { .. });
        self.state = RegistrationState::Registered {
            expires_at: now + lifetime,
        };
        self.due = Some(now + lifetime - margin);
        if !was_registered {
            tracing::info!(expires = granted, "registered at the trunk");
        }
    }

    /// The lifetime the registrar granted our binding: the `expires` parameter of our
    /// Contact in its answer, else its `Expires` header, else what we asked for.
    fn granted(&self, response: &Response) -> u32 {
        let ours = &self.config.contact;
        let from_contact = response.headers.contacts().ok().and_then(|contacts| {
            contacts
                .into_iter()
                .find(|c| {
                    c.uri.user() == ours.user()
                        && c.uri.host().eq_ignore_ascii_case(ours.host())
                        && c.uri.port().unwrap_or(5060) == ours.port().unwrap_or(5060)
                })
                .and_then(|c| c.params.value("expires").and_then(|v| v.parse().ok()))
        });
        let from_header = || {
            response
                .headers
                .get(&HeaderName::Expires)
                .and_then(|v| v.trim().parse().ok())
        };
        from_contact
            .or_else(from_header)
            .unwrap_or(self.expires)
            .clamp(1, MAX_EXPIRES)
    }

    fn fail(&mut self, now: Instant, failure: RegistrationFailure) {
        self.stats.failed += 1;
        self.auth_rounds = 0;
        self.ready = None;
        if self.removing {
            self.state = RegistrationState::Unregistered;
            self.due = None;
            tracing::warn!(%failure, "registration not removed at the trunk");
            return;
        }
        self.failures = self.failures.saturating_add(1);
        let wait = backoff(self.failures);
        let retry_at = now + wait;
        self.state = RegistrationState::Failed { retry_at, failure };
        self.due = Some(retry_at);
        tracing::warn!(%failure, retry_in = ?wait, "registration at the trunk failed");
    }

    fn build(&mut self, expires: u32) -> Request {
        self.cseq = self.cseq.saturating_add(1);
        let config = &self.config;
        let registrar = Uri::sip(None, &config.registrar_host, config.registrar_port);
        let aor = Uri::sip(
            Some(&config.credentials.username),
            &config.registrar_host,
            None,
        );
        let mut request = Request::new(Method::Register, registrar);
        let h = &mut request.headers;
        h.push(
            HeaderName::From,
            NameAddr::new(aor.clone())
                .with_tag(&self.from_tag)
                .to_string(),
        );
        h.push(HeaderName::To, NameAddr::new(aor).to_string());
        h.push(HeaderName::CallId, self.call_id.clone());
        h.push(HeaderName::CSeq, format!("{} REGISTER", self.cseq));
        h.push(HeaderName::MaxForwards, "70");
        h.push(
            HeaderName::Contact,
            NameAddr::new(config.contact.clone()).to_string(),
        );
        h.push(HeaderName::Expires, expires.to_string());
        if let Some(agent) = &config.agent {
            h.push(HeaderName::UserAgent, agent.clone());
        }
        request
    }
}

/// The wait after `failures` failed attempts in a row: 5 s doubling, capped at 5 min.
fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    BACKOFF_BASE.saturating_mul(1 << doublings).min(BACKOFF_CAP)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> RegistrationConfig {
        RegistrationConfig {
            registrar_host: "carrier.example".into(),
            registrar_port: Some(5080),
            credentials: Credentials {
                username: "2001".into(),
                password: "secret".into(),
            },
            contact: Uri::sip(Some("2001"), "192.0.2.1", Some(5060)),
            expires: Duration::from_secs(600),
            agent: None,
        }
    }

    fn respond(request: &Request, status: u16, extra: &[(&str, &str)]) -> Response {
        let mut response = Response::to_request(request, status, None);
        for (name, value) in extra {
            response.headers.push(HeaderName::parse(name), *value);
        }
        response
    }

    /// Polls the due REGISTER at `now` and says it went out on transaction `tx`.
    fn send(reg: &mut Registration, now: Instant, tx: u64) -> Request {
        let request = reg.poll_request(now).expect("a REGISTER due");
        reg.sent(ClientTxId(tx), request.clone());
        request
    }

    fn cseq(request: &Request) -> u32 {
        request.headers.cseq().unwrap().seq
    }

    #[test]
    fn registers_with_credentials_and_refreshes_before_expiry() {
        let start = Instant::now();
        let mut reg = Registration::new(config(), start);
        assert_eq!(reg.poll_timeout(), Some(start));
        let first = send(&mut reg, start, 1);
        assert_eq!(first.method, Method::Register);
        assert_eq!(first.uri.to_string(), "sip:carrier.example:5080");
        assert_eq!(first.headers.get(&HeaderName::Expires), Some("600"));
        assert!(first.headers.to().unwrap().uri.to_string() == "sip:2001@carrier.example");
        assert_eq!(reg.poll_timeout(), None, "nothing while one is in flight");
        reg.on_response(
            start,
            &respond(
                &first,
                401,
                &[(
                    "WWW-Authenticate",
                    "Digest realm=\"carrier.example\", nonce=\"n\", qop=\"auth\"",
                )],
            ),
        );
        let second = reg.poll_request(start).expect("sent again at once");
        assert_eq!(second.headers.call_id(), first.headers.call_id());
        assert_eq!(cseq(&second), cseq(&first) + 1);
        assert!(second
            .headers
            .get(&HeaderName::parse("Authorization"))
            .unwrap()
            .contains("uri=\"sip:carrier.example:5080\""));
        reg.sent(ClientTxId(2), second.clone());
        assert!(reg.owns(ClientTxId(2)) && !reg.owns(ClientTxId(1)));
        let granted = respond(
            &second,
            200,
            &[("Contact", "<sip:2001@192.0.2.1:5060>;expires=120")],
        );
        reg.on_response(start, &granted);
        assert_eq!(
            reg.state(),
            RegistrationState::Registered {
                expires_at: start + Duration::from_secs(120)
            }
        );
        // Refreshed half-way through a short binding, on the same Call-ID, without waiting
        // for a challenge.
        assert_eq!(reg.poll_timeout(), Some(start + Duration::from_secs(60)));
        assert!(reg.poll_request(start + Duration::from_secs(59)).is_none());
        let refresh = send(&mut reg, start + Duration::from_secs(60), 3);
        assert_eq!(refresh.headers.call_id(), first.headers.call_id());
        assert_eq!(cseq(&refresh), cseq(&second) + 1);
        assert_eq!(reg.stats().accepted, 1);
    }

    #[test]
    fn wrong_password_backs_off_instead_of_looping() {
        let start = Instant::now();
        let mut reg = Registration::new(config(), start);
        let challenge = |r: &Request| {
            respond(
                r,
                401,
                &[("WWW-Authenticate", "Digest realm=\"r\", nonce=\"x\"")],
            )
        };
        let mut now = start;
        let mut waits = Vec::new();
        for attempt in 0..4u64 {
            let first = send(&mut reg, now, attempt * 2);
            reg.on_response(now, &challenge(&first));
            let with_credentials = reg.poll_request(now).unwrap();
            reg.sent(ClientTxId(attempt * 2 + 1), with_credentials.clone());
            reg.on_response(now, &challenge(&with_credentials));
            let RegistrationState::Failed { retry_at, failure } = reg.state() else {
                panic!("expected a failure, got {:?}", reg.state());
            };
            assert_eq!(failure, RegistrationFailure::Auth(AuthFailure::Rejected));
            assert!(reg.poll_request(now).is_none(), "no tight loop");
            waits.push(retry_at - now);
            now = retry_at;
        }
        assert_eq!(
            waits,
            [5, 10, 20, 40].map(Duration::from_secs),
            "the backoff doubles"
        );
        assert_eq!(reg.stats().failed, 4);
        assert_eq!(backoff(100), BACKOFF_CAP);
    }

    #[test]
    fn timeouts_423_and_refusals() {
        let start = Instant::now();
        let mut reg = Registration::new(config(), start);
        send(&mut reg, start, 1);
        reg.on_failure(start);
        assert!(matches!(
            reg.state(),
            RegistrationState::Failed {
                failure: RegistrationFailure::NoAnswer,
                ..
            }
        ));
        let later = start + BACKOFF_BASE;
        let again = send(&mut reg, later, 2);
        reg.on_response(later, &respond(&again, 423, &[("Min-Expires", "1800")]));
        let longer = reg.poll_request(later).expect("asked again at once");
        assert_eq!(longer.headers.get(&HeaderName::Expires), Some("1800"));
        reg.sent(ClientTxId(3), longer.clone());
        reg.on_response(later, &respond(&longer, 403, &[]));
        assert!(matches!(
            reg.state(),
            RegistrationState::Failed {
                failure: RegistrationFailure::Refused(403),
                ..
            }
        ));
        // A 423 asking for less, or nonsense, is a refusal.
        let mut reg = Registration::new(config(), start);
        let first = send(&mut reg, start, 1);
        reg.on_response(start, &respond(&first, 423, &[("Min-Expires", "junk")]));
        assert!(matches!(reg.state(), RegistrationState::Failed { .. }));
    }

    #[test]
    fn shutdown_removes_the_binding_once() {
        let start = Instant::now();
        let mut reg = Registration::new(config(), start);
        let first = send(&mut reg, start, 1);
        reg.on_response(start, &respond(&first, 200, &[("Expires", "600")]));
        assert!(reg.remove(start));
        assert!(!reg.remove(start), "asked twice: one removal");
        let removal = send(&mut reg, start, 2);
        assert_eq!(removal.headers.get(&HeaderName::Expires), Some("0"));
        assert_eq!(removal.headers.call_id(), first.headers.call_id());
        reg.on_response(start, &respond(&removal, 200, &[]));
        assert_eq!(reg.state(), RegistrationState::Unregistered);
        assert_eq!(reg.poll_timeout(), None);
        // Never registered (failing): nothing to remove.
        let mut failing = Registration::new(config(), start);
        let first = send(&mut failing, start, 1);
        failing.on_failure(start);
        let _ = first;
        assert!(!failing.remove(start));
        assert_eq!(failing.poll_timeout(), None);
    }

    #[test]
    fn a_removal_waits_for_the_register_in_flight() {
        let start = Instant::now();
        let mut reg = Registration::new(config(), start);
        let first = send(&mut reg, start, 1);
        assert!(reg.remove(start));
        assert!(reg.poll_request(start).is_none());
        reg.on_response(start, &respond(&first, 200, &[]));
        // The binding made while the shutdown began is removed at once.
        let removal = send(&mut reg, start, 2);
        assert_eq!(removal.headers.get(&HeaderName::Expires), Some("0"));
        reg.on_response(start, &respond(&removal, 200, &[]));
        assert_eq!(reg.state(), RegistrationState::Unregistered);
        assert_eq!(reg.poll_timeout(), None);
    }
}
