//! The trust boundary (SPEC.md "Trust boundary"), checked before any transaction exists.
//!
//! Every message from the transport passes [`Engine::admit`] first:
//!
//! - A request from a source outside `sip.trusted_peers` and the trunk's addresses gets at
//!   most one stateless answer (`sip.untrusted_reply`: 403, or nothing) and creates no state:
//!   no transaction, no 100 Trying, no retransmission. An ACK never gets an answer. A
//!   response from such a source is dropped. Either way it is counted, and logged at most
//!   once per source per minute ([`SourceLog`]).
//! - A new INVITE from a trusted source while the engine is draining, holds `sip.max_calls`
//!   calls, or has fallen behind its input (the INVITE waited `sip.overload_wait_ms` in the
//!   transport's queue, or `sip.overload_backlog` new requests are queued) gets a
//!   stateless `503` with `Retry-After`: shedding it costs one response, and the messages of
//!   existing calls (which are never shed) keep the engine's time. So does any new
//!   out-of-dialog request while `sip.max_server_transactions` server transactions are held:
//!   what bounds the memory a trusted flood can take.
//! - Everything else goes to the transaction layer. Inside a call, a request on leg B must
//!   come from the trunk (checked in `in_dialog.rs`), and a response must come from where its
//!   request went (checked by the transaction layer).
//!
//! Why stateless: a source address over UDP can be spoofed. One bounded answer per datagram
//! is no amplifier (the answer is smaller than the request: no body, only the Via, From, To,
//! Call-ID and CSeq rows copied back), and nothing is kept that a flood could fill.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use sip_core::{HeaderName, Message, Method, Peer, Request, Response};

use super::Engine;
use crate::outbound::local_response;
use crate::refusal::Refusal;

/// What an untrusted source's request gets (`sip.untrusted_reply`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UntrustedReply {
    /// One stateless `403 Forbidden`.
    #[default]
    Forbidden,
    /// Nothing: the source learns nothing, not even that a SIP server listens.
    Drop,
}

/// What [`Engine::admit`] decided for one message.
#[derive(Debug)]
pub(super) enum Admission {
    /// Into the transaction layer.
    Stateful,
    /// Answered once, without a transaction.
    Stateless(Response),
    /// Nothing more happens.
    Drop,
}

/// Sources logged per window at most; beyond it, only counted (a spoofed flood cannot grow it).
const LOGGED_SOURCES: usize = 1024;
/// The log window: each source is logged at most once in it.
const LOG_WINDOW: Duration = Duration::from_secs(60);

/// Rate limit of the "untrusted source" log line: each source at most once per minute, and at
/// most [`LOGGED_SOURCES`] sources per minute; what was not logged is summed up in the next
/// window's first line.
#[derive(Debug, Default)]
pub(super) struct SourceLog {
    window_start: Option<Instant>,
    logged: HashSet<IpAddr>,
    suppressed: u64,
}

impl SourceLog {
    /// Whether a message from `source` at `now` is to be logged; `Some(n)`: yes, and `n`
    /// earlier messages went unlogged since the previous window.
    fn should_log(&mut self, now: Instant, source: IpAddr) -> Option<u64> {
        let expired = self
            .window_start
            .is_none_or(|start| now.saturating_duration_since(start) >= LOG_WINDOW);
        let mut carried = 0;
        if expired {
            self.window_start = Some(now);
            self.logged.clear();
            self.logged.shrink_to(LOGGED_SOURCES.min(64));
            carried = std::mem::take(&mut self.suppressed);
        }
        if self.logged.len() < LOGGED_SOURCES && self.logged.insert(source) {
            return Some(carried);
        }
        self.suppressed += 1 + carried;
        None
    }
}

impl Engine {
    /// Whether `ip` may talk to the engine statefully: a trusted peer or the trunk.
    ///
    /// Addresses are compared in canonical form (an IPv4-mapped `::ffff:a.b.c.d` is
    /// `a.b.c.d`): the transport already reports an IPv4 peer of a dual-stack socket so, and
    /// this keeps `127.0.0.0/8` matching it should an address reach here another way.
    pub(super) fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.is_trunk(ip)
            || self
                .config
                .trusted_peers
                .iter()
                .any(|net| net.contains(&ip))
    }

    /// Whether `ip` is the trunk's: the only source leg B's requests and responses may
    /// come from. Canonical on both sides, so that a trunk configured as `[::ffff:a.b.c.d]`
    /// is the IPv4 peer the transport reports.
    pub(super) fn is_trunk(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        let is = |peer: &Peer| peer.addr.ip().to_canonical() == ip;
        is(&self.config.trunk) || self.trunk_targets.iter().any(is)
    }

    /// Whether a request inside a call came from that leg's peer: a trusted peer for leg A,
    /// the trunk for leg B (a trusted phone must not hang up, or move the media of, a call
    /// leg it is not part of).
    pub(super) fn is_leg_peer(&self, leg: crate::call::Leg, from: Peer) -> bool {
        match leg {
            crate::call::Leg::A => self.is_trusted(from.addr.ip()),
            crate::call::Leg::B => self.is_trunk(from.addr.ip()),
        }
    }

    /// Decides what `message` from `from` may do. See the module documentation.
    pub(super) fn admit(&mut self, now: Instant, message: &Message, from: Peer) -> Admission {
        let request = match message {
            Message::Response(_) if self.is_trusted(from.addr.ip()) => return Admission::Stateful,
            Message::Response(_) => {
                self.untrusted(now, from, "response");
                return Admission::Drop;
            }
            Message::Request(request) => request,
        };
        if !self.is_trusted(from.addr.ip()) {
            self.untrusted(now, from, request.method.as_str());
            if request.method == Method::Invite {
                *self
                    .stats
                    .calls_refused
                    .entry(Refusal::UntrustedSource.code())
                    .or_default() += 1;
            }
            return match (self.config.untrusted_reply, &request.method) {
                (_, Method::Ack) | (UntrustedReply::Drop, _) => Admission::Drop,
                (UntrustedReply::Forbidden, _) => {
                    Admission::Stateless(self.stateless(request, 403, "Untrusted source", None))
                }
            };
        }
        let out_of_dialog = request.headers.to().is_ok_and(|to| to.tag().is_none())
            && !matches!(request.method, Method::Ack | Method::Cancel);
        if !out_of_dialog || self.layer.has_server_transaction(request) {
            return Admission::Stateful;
        }
        if self.layer.server_count() >= self.config.max_server_transactions {
            // Every new transaction is memory held for up to 64·T1: past the bound, nothing
            // new is taken on until some end. The calls' own requests still are.
            if request.method == Method::Invite {
                *self
                    .stats
                    .calls_refused
                    .entry(Refusal::Overloaded.code())
                    .or_default() += 1;
            }
            let retry_after = self.config.retry_after.as_secs().max(1);
            return Admission::Stateless(self.stateless(
                request,
                503,
                "Overloaded",
                Some(retry_after),
            ));
        }
        if request.method != Method::Invite {
            return Admission::Stateful;
        }
        let shed = if self.draining {
            Some((Refusal::ShuttingDown, "Shutting down"))
        } else if self.active_call_count() >= self.config.max_calls {
            Some((Refusal::Overloaded, "Too many calls"))
        } else if self.input_backlog > self.config.overload_backlog
            || self.input_wait >= self.config.overload_wait
        {
            Some((Refusal::Overloaded, "Overloaded"))
        } else {
            None
        };
        let Some((reason, text)) = shed else {
            return Admission::Stateful;
        };
        *self.stats.calls_refused.entry(reason.code()).or_default() += 1;
        let retry_after = self.config.retry_after.as_secs().max(1);
        Admission::Stateless(self.stateless(request, 503, text, Some(retry_after)))
    }

    /// Counts (and rate-limits the log of) a message from an untrusted source.
    fn untrusted(&mut self, now: Instant, from: Peer, what: &str) {
        self.stats.untrusted_messages += 1;
        if let Some(unlogged) = self.untrusted_log.should_log(now, from.addr.ip()) {
            tracing::info!(
                source = %from.addr,
                what,
                unlogged,
                "SIP from an untrusted source ignored (sip.trusted_peers); \
                 each source is logged at most once a minute"
            );
        }
    }

    /// A response to `request` that no transaction will ever retransmit. Its To tag is
    /// derived from the request's transaction identifiers, so that copies of the request get
    /// byte-identical answers (RFC 3261 §8.2.7).
    fn stateless(
        &self,
        request: &Request,
        status: u16,
        text: &str,
        retry_after: Option<u64>,
    ) -> Response {
        let tag = stateless_tag(request);
        let mut response = local_response(&self.config.local, request, status, Some(&tag), None);
        if let Some(secs) = retry_after {
            response
                .headers
                .push(HeaderName::parse("Retry-After"), secs.to_string());
        }
        // The Reason header of stateful refusals is left out on purpose for strangers:
        // nothing but the status line, to keep the answer smaller than the request.
        if status != 403 {
            response.headers.push(
                HeaderName::Reason,
                crate::outbound::reason_header(status, text),
            );
        }
        response
    }
}

/// A To tag that is a function of the request's Call-ID, From tag and top Via branch.
fn stateless_tag(request: &Request) -> String {
    // SipHash with fixed keys: deterministic across copies, which is all a tag for a
    // response that is never part of a dialog needs.
    #[allow(deprecated)]
    let mut hasher = std::hash::SipHasher::new();
    request
        .headers
        .call_id()
        .unwrap_or_default()
        .hash(&mut hasher);
    request
        .headers
        .from()
        .ok()
        .and_then(|f| f.tag().map(str::to_owned))
        .hash(&mut hasher);
    request
        .headers
        .top_via()
        .ok()
        .and_then(|via| via.branch().map(str::to_owned))
        .hash(&mut hasher);
    format!("sl{:016x}", hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_source_is_logged_once_a_window_and_the_rest_is_summed() {
        let mut log = SourceLog::default();
        let t0 = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert_eq!(log.should_log(t0, a), Some(0));
        assert_eq!(log.should_log(t0, a), None);
        assert_eq!(log.should_log(t0 + Duration::from_secs(59), a), None);
        assert_eq!(log.should_log(t0, b), Some(0));
        // The next window logs again and says how many went unlogged.
        assert_eq!(log.should_log(t0 + LOG_WINDOW, a), Some(2));
        assert_eq!(log.should_log(t0 + LOG_WINDOW, b), Some(0));
    }

    #[test]
    fn a_spoofed_flood_of_sources_is_bounded() {
        let mut log = SourceLog::default();
        let t0 = Instant::now();
        let mut logged = 0;
        for i in 0..(LOGGED_SOURCES as u32 * 4) {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            if log.should_log(t0, ip).is_some() {
                logged += 1;
            }
        }
        assert_eq!(logged, LOGGED_SOURCES);
        assert!(log.logged.len() <= LOGGED_SOURCES);
        assert_eq!(log.suppressed, 3 * LOGGED_SOURCES as u64);
    }
}
