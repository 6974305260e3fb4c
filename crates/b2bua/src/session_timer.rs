//! Session timers (RFC 4028): how long each leg's session lives without a refresh, and who
//! refreshes it. Pure negotiation: header values in, decisions out; the engine
//! (`engine/session.rs`) keeps the timers and sends the refreshes.
//!
//! A B2BUA has two sessions: leg A, where callbridge is the UAS and answers what the caller
//! asked for, and leg B, where it is the UAC and asks the callee. Each is negotiated on its
//! own; a refresh that crosses callbridge (a re-INVITE or UPDATE relayed from one leg to the
//! other) refreshes both.

use std::time::Duration;

use sip_core::message::split_top_level_commas;
use sip_core::{HeaderName, Headers};

/// RFC 4028's floor for Min-SE: no session interval may be shorter.
pub const MIN_SE_FLOOR: u32 = 90;

/// The longest session interval accepted (a day): a larger Session-Expires is treated as this.
const MAX_INTERVAL: u32 = 86_400;

/// What callbridge asks for and accepts (`sip.session_expires_secs`, `sip.min_se_secs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionTimerConfig {
    /// The session interval callbridge asks for on leg B and proposes on leg A when the
    /// caller asked for none; `None`: callbridge asks for none (it still honours a caller's).
    pub session_expires: Option<u32>,
    /// The shortest interval callbridge accepts; a caller asking for less gets 422.
    pub min_se: u32,
}

impl Default for SessionTimerConfig {
    fn default() -> Self {
        SessionTimerConfig {
            session_expires: Some(1800),
            min_se: MIN_SE_FLOOR,
        }
    }
}

/// Which side of a leg refreshes its session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refresher {
    Uac,
    Uas,
}

impl Refresher {
    fn as_str(self) -> &'static str {
        match self {
            Refresher::Uac => "uac",
            Refresher::Uas => "uas",
        }
    }
}

/// A `Session-Expires` value (RFC 4028 §4): `delta-seconds [;refresher=uac|uas]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionExpires {
    pub delta: u32,
    pub refresher: Option<Refresher>,
}

impl SessionExpires {
    /// The header value.
    pub fn to_header(self) -> String {
        match self.refresher {
            Some(r) => format!("{};refresher={}", self.delta, r.as_str()),
            None => self.delta.to_string(),
        }
    }
}

/// A leg's negotiated session timer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LegTimer {
    /// The session interval.
    pub interval: Duration,
    /// callbridge refreshes (else the peer does, and callbridge watches for it).
    pub we_refresh: bool,
}

impl LegTimer {
    /// When callbridge refreshes, after the last refresh: half the interval (RFC 4028 §10).
    pub fn refresh_after(self) -> Duration {
        self.interval / 2
    }

    /// When the session is taken for dead without a refresh from the peer: the interval less
    /// a third of it or 32 s, whichever is less (RFC 4028 §10), so the BYE goes before the
    /// peer's own timer ends the session.
    pub fn expire_after(self) -> Duration {
        self.interval - (self.interval / 3).min(Duration::from_secs(32))
    }
}

/// The `Session-Expires` of `headers` (long or compact form `x`); `None` when absent or
/// unreadable (an unreadable one is ignored, as RFC 3261 §8.2.2 lets a UAS ignore what it
/// cannot parse in an optional header).
pub fn session_expires(headers: &Headers) -> Option<SessionExpires> {
    let value = headers.get(&HeaderName::SessionExpires)?;
    let mut parts = value.split(';');
    let delta = parts.next()?.trim().parse::<u32>().ok()?.min(MAX_INTERVAL);
    let refresher = parts.find_map(|p| {
        let (name, value) = p.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("refresher") {
            return None;
        }
        match value.trim().to_ascii_lowercase().as_str() {
            "uac" => Some(Refresher::Uac),
            "uas" => Some(Refresher::Uas),
            _ => None,
        }
    });
    (delta > 0).then_some(SessionExpires { delta, refresher })
}

/// The `Min-SE` of `headers`.
pub fn min_se(headers: &Headers) -> Option<u32> {
    let value = headers.get(&HeaderName::parse("Min-SE"))?;
    value
        .split(';')
        .next()?
        .trim()
        .parse::<u32>()
        .ok()
        .map(|v| v.min(MAX_INTERVAL))
}

/// Whether `headers` lists the `timer` option tag in `Supported` or `Require`.
pub fn supports_timer(headers: &Headers) -> bool {
    [HeaderName::Supported, HeaderName::Require]
        .iter()
        .flat_map(|name| headers.get_all(name))
        .flat_map(split_top_level_commas)
        .any(|tag| tag.trim().eq_ignore_ascii_case("timer"))
}

/// What callbridge, as leg A's UAS, answers to the caller's INVITE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UasDecision {
    /// The caller asked for an interval below `min_se`: 422 with `Min-SE: min_se`.
    TooBrief { min_se: u32 },
    /// No session timer on leg A.
    None,
    /// This timer; the 2xx carries `Session-Expires` (and `Require: timer` when the caller
    /// refreshes).
    Timer(SessionExpires),
}

/// Leg A (RFC 4028 §9): the caller's Session-Expires is accepted when it is at least our
/// Min-SE, with the refresher it chose, else the caller when it supports timers, else
/// callbridge. A caller that asked for nothing but supports timers gets callbridge's
/// interval, and refreshes it. One that neither asked nor supports them gets none: RFC 4028
/// would let callbridge impose one and refresh it itself, but re-INVITEs a caller never
/// asked for are a risk with no gain (leg B's timer already catches a dead callee, and the
/// media inactivity timer a dead caller).
pub fn negotiate_uas(invite: &Headers, config: SessionTimerConfig) -> UasDecision {
    let supports = supports_timer(invite);
    let default_refresher = if supports {
        Refresher::Uac
    } else {
        Refresher::Uas
    };
    match session_expires(invite) {
        Some(asked) if asked.delta < config.min_se => UasDecision::TooBrief {
            min_se: config.min_se,
        },
        Some(asked) => UasDecision::Timer(SessionExpires {
            delta: asked.delta,
            // Without timer support the caller cannot refresh, whatever it wrote.
            refresher: Some(if supports {
                asked.refresher.unwrap_or(default_refresher)
            } else {
                Refresher::Uas
            }),
        }),
        None => match config.session_expires {
            Some(delta) if supports => UasDecision::Timer(SessionExpires {
                delta: delta.max(config.min_se),
                refresher: Some(Refresher::Uac),
            }),
            _ => UasDecision::None,
        },
    }
}

/// Leg A's timer once answered with `decision`'s Session-Expires.
pub fn uas_timer(answered: SessionExpires) -> LegTimer {
    LegTimer {
        interval: Duration::from_secs(u64::from(answered.delta)),
        we_refresh: answered.refresher == Some(Refresher::Uas),
    }
}

/// Leg B's INVITE: the Session-Expires callbridge asks for (at least `at_least`, the Min-SE
/// of a 422 it got), or `None` when it asks for none.
pub fn uac_request(config: SessionTimerConfig, at_least: u32) -> Option<SessionExpires> {
    config.session_expires.map(|delta| SessionExpires {
        delta: delta.max(config.min_se).max(at_least),
        refresher: None,
    })
}

/// Leg B's timer from the callee's 2xx (RFC 4028 §7.2): none when it has no Session-Expires;
/// callbridge refreshes when it says `refresher=uac` or names none.
pub fn uac_timer(answer: &Headers) -> Option<LegTimer> {
    let granted = session_expires(answer)?;
    Some(LegTimer {
        interval: Duration::from_secs(u64::from(granted.delta)),
        we_refresh: granted.refresher != Some(Refresher::Uas),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(rows: &[(&str, &str)]) -> Headers {
        let mut h = Headers::new();
        for (name, value) in rows {
            h.push(HeaderName::parse(name), *value);
        }
        h
    }

    #[test]
    fn parses_session_expires_and_min_se() {
        let h = headers(&[("x", "1800;refresher=UAS"), ("Min-SE", "120")]);
        assert_eq!(
            session_expires(&h),
            Some(SessionExpires {
                delta: 1800,
                refresher: Some(Refresher::Uas)
            })
        );
        assert_eq!(min_se(&h), Some(120));
        for bad in ["", "abc", "0", "-5", ";refresher=uac"] {
            assert_eq!(
                session_expires(&headers(&[("Session-Expires", bad)])),
                None,
                "{bad}"
            );
        }
        let huge = headers(&[("Session-Expires", "99999999")]);
        assert_eq!(session_expires(&huge).unwrap().delta, MAX_INTERVAL);
    }

    #[test]
    fn uas_negotiation() {
        let config = SessionTimerConfig::default();
        let brief = headers(&[("Session-Expires", "60"), ("Supported", "timer")]);
        assert_eq!(
            negotiate_uas(&brief, config),
            UasDecision::TooBrief { min_se: 90 }
        );
        let asks = headers(&[
            ("Session-Expires", "600;refresher=uas"),
            ("Supported", "100rel, timer"),
        ]);
        let UasDecision::Timer(se) = negotiate_uas(&asks, config) else {
            panic!()
        };
        assert_eq!(se.to_header(), "600;refresher=uas");
        assert!(uas_timer(se).we_refresh);
        let caller_refreshes = headers(&[("Session-Expires", "600"), ("Supported", "timer")]);
        let UasDecision::Timer(se) = negotiate_uas(&caller_refreshes, config) else {
            panic!()
        };
        assert_eq!(se.refresher, Some(Refresher::Uac));
        // No timer support: callbridge refreshes whatever was asked.
        let unsupported = headers(&[("Session-Expires", "600;refresher=uac")]);
        let UasDecision::Timer(se) = negotiate_uas(&unsupported, config) else {
            panic!()
        };
        assert_eq!(se.refresher, Some(Refresher::Uas));
        // Nothing asked: callbridge's interval for a caller that supports timers, none for
        // one that does not.
        let UasDecision::Timer(se) = negotiate_uas(&headers(&[("k", "timer")]), config) else {
            panic!()
        };
        assert_eq!(se.to_header(), "1800;refresher=uac");
        assert_eq!(negotiate_uas(&headers(&[]), config), UasDecision::None);
        let off = SessionTimerConfig {
            session_expires: None,
            ..config
        };
        assert_eq!(negotiate_uas(&headers(&[]), off), UasDecision::None);
    }

    #[test]
    fn uac_negotiation_and_timings() {
        let config = SessionTimerConfig::default();
        assert_eq!(uac_request(config, 0).unwrap().delta, 1800);
        assert_eq!(uac_request(config, 3600).unwrap().delta, 3600);
        assert!(uac_timer(&headers(&[])).is_none());
        let theirs = uac_timer(&headers(&[("Session-Expires", "120;refresher=uas")])).unwrap();
        assert!(!theirs.we_refresh);
        assert_eq!(theirs.expire_after(), Duration::from_secs(88));
        let ours = uac_timer(&headers(&[("Session-Expires", "1800")])).unwrap();
        assert!(ours.we_refresh);
        assert_eq!(ours.refresh_after(), Duration::from_secs(900));
        assert_eq!(ours.expire_after(), Duration::from_secs(1768));
    }
}
