//! The state of one bridged call: leg A (the user's phone, reached through the trunk, where
//! callbridge is the UAS) and leg B (the target, where callbridge is the UAC).
//!
//! This module holds data and the small decisions that need only that data; the
//! [`Engine`](crate::engine::Engine) drives it with transaction events.

use std::collections::HashMap;
use std::time::Instant;

use sip_core::dialog::{Dialog, DialogId};
use sip_core::transaction::{ClientTxId, ServerTxId, TxId};
use sip_core::{HeaderName, Method, Peer, Request};

use crate::intent::Intent;
use crate::media::CallMedia;
use crate::registry::CallState;

/// A call's handle inside the engine; stable for the call's whole life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallKey(pub u64);

/// One of the two legs of a call: the one name signalling, media and call records use for a
/// side of the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Leg {
    /// The incoming call from the user's phone (the caller); callbridge is its UAS.
    A,
    /// The outgoing call to the target (the callee); callbridge is its UAC.
    B,
}

impl Leg {
    pub fn other(self) -> Leg {
        match self {
            Leg::A => Leg::B,
            Leg::B => Leg::A,
        }
    }

    /// The leg's position in per-leg arrays (`[A, B]`).
    pub fn index(self) -> usize {
        match self {
            Leg::A => 0,
            Leg::B => 1,
        }
    }

    /// Who is on this leg, as the API names them: `caller` or `callee`.
    pub fn party(self) -> &'static str {
        match self {
            Leg::A => "caller",
            Leg::B => "callee",
        }
    }
}

/// Timers a call owns, beyond the transaction timers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CallTimer {
    /// `sip.no_answer_secs` after leg B's INVITE.
    NoAnswer,
    /// `sip.max_call_secs` after the answer.
    MaxDuration,
    /// Retransmission of leg A's unacknowledged reliable provisional (RFC 3262 §3).
    ReliableProvisional,
    /// callbridge refreshes the leg's session (RFC 4028).
    SessionRefresh(Leg),
    /// The leg's peer had to refresh its session by now.
    SessionExpiry(Leg),
    /// `media.inactivity_secs` after the last media activity known: ask the driver for fresh
    /// counters, then decide at [`CallTimer::MediaCheck`].
    MediaInactivity,
    /// Shortly after the reports asked for at [`CallTimer::MediaInactivity`]: hang up if the
    /// counters still show no packet for the inactivity timeout, else wait again.
    MediaCheck,
}

/// An in-dialog request relayed from one leg to the other, waiting for its answer.
#[derive(Debug)]
pub struct Relay {
    /// The leg the request came from (its server transaction gets the answer).
    pub from_leg: Leg,
    pub server_tx: ServerTxId,
    /// The request as received, to build the relayed response from.
    pub request: Request,
    /// CSeq of the relayed request on the other leg (for the ACK of a relayed re-INVITE).
    pub cseq: u32,
    /// A final response has been relayed.
    pub answered: bool,
    /// The ACK sent on the other leg for its 2xx (re-sent if that 2xx is retransmitted).
    pub ack: Option<Request>,
    /// The request as sent to leg B, kept only when trunk credentials are configured: a
    /// 401/407 to it is answered by sending it again with credentials.
    pub sent: Option<Request>,
    /// How many times it was sent again with credentials.
    pub auth_rounds: u8,
}

/// An ACK we owe one leg and can only build once the other leg's ACK brings the SDP answer
/// (the offer came in a 2xx because the INVITE had no body: "late offer").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeferredAck {
    /// The leg that gets the ACK.
    pub leg: Leg,
    /// CSeq number of the INVITE being acknowledged on that leg.
    pub cseq: u32,
    /// The server transaction on the other leg whose ACK carries the answer.
    pub waiting_on: ServerTxId,
}

/// Leg A: the user's call to the dedicated number.
pub struct LegA {
    /// The INVITE as received.
    pub invite: Request,
    pub invite_tx: ServerTxId,
    /// Where the INVITE came from: responses and in-dialog requests to leg A go back there
    /// (the trunk, or a phone behind NAT).
    pub source: Peer,
    /// Our To tag.
    pub tag: String,
    /// The dialog id leg A's in-dialog requests carry (known from the start: our tag and
    /// the caller's From tag), registered so a BYE before the answer finds the call.
    pub dialog_id: DialogId,
    /// Final status sent on the INVITE, if any.
    pub final_sent: Option<u16>,
    pub dialog: Option<Dialog>,
}

/// Leg B: our call to the target through the trunk.
pub struct LegB {
    /// The trunk's address this leg's INVITE went to, and where its in-dialog requests and
    /// ACKs go: one of the trunk's targets (RFC 3263), chosen when the leg was placed.
    pub target: Peer,
    /// The trunk's other targets, in order, not tried yet by this leg: the next one gets
    /// the INVITE when this one times out, fails to send or answers 503.
    pub fallbacks: Vec<Peer>,
    /// The INVITE as handed to the transaction layer (Via included once sent).
    pub invite: Request,
    pub invite_tx: ClientTxId,
    /// Final status received, if any.
    pub final_received: Option<u16>,
    /// A CANCEL was asked of the transaction layer.
    pub cancelled: bool,
    pub dialog: Option<Dialog>,
    /// The ACK sent for leg B's 2xx, re-sent when the 2xx is retransmitted.
    pub ack: Option<Request>,
    /// How many times the INVITE, and the BYE, were sent again with credentials after a
    /// 401/407 (bounded by [`crate::auth::MAX_ROUNDS`]).
    pub invite_auth_rounds: u8,
    pub bye_auth_rounds: u8,
    /// 3xx followed through the trunk, and the numbers leg B was sent to before the current
    /// one (a redirect back to one of them is a loop).
    pub redirects: u8,
    pub tried: Vec<String>,
}

/// Everything the engine knows about one call.
pub struct Call {
    pub key: CallKey,
    pub intent: Intent,
    pub span: tracing::Span,
    /// `Trying`/`Ringing` while leg B is unanswered, `Answered` once bridged, `Ended` once the
    /// outcome is decided (final answer or BYE sent) while the last transactions of both
    /// legs finish before the engine forgets it. Never `Intent`.
    pub state: CallState,
    pub media: CallMedia,
    pub a: LegA,
    pub b: LegB,
    /// In-dialog requests relayed to the other leg, by the client transaction carrying them.
    pub relays: HashMap<ClientTxId, Relay>,
    pub deferred_ack: Option<DeferredAck>,
    /// Reliable provisionals (100rel) on both legs.
    pub reliability: crate::engine::Reliability,
    /// Session timers (RFC 4028) on both legs.
    pub sessions: crate::engine::CallSessions,
    /// Transactions of this call still alive in the transaction layer.
    pub live_transactions: usize,
    /// Deadlines of this call's own timers.
    pub timers: HashMap<CallTimer, Instant>,
    /// A BYE was sent on the leg (so a second one is never sent).
    bye_sent: [bool; 2],
    /// The outcome was written to the call registry.
    pub recorded_end: bool,
}

impl Call {
    /// `span` is the call's tracing span (`call{callid=…}`), created when the intent matched.
    pub fn new(key: CallKey, intent: Intent, span: tracing::Span, a: LegA, b: LegB) -> Call {
        Call {
            key,
            intent,
            span,
            state: CallState::Trying,
            media: CallMedia::new(key, Default::default()),
            a,
            b,
            relays: HashMap::new(),
            deferred_ack: None,
            reliability: Default::default(),
            sessions: Default::default(),
            live_transactions: 0,
            timers: HashMap::new(),
            bye_sent: [false; 2],
            recorded_end: false,
        }
    }

    /// Called when one of the call's transactions has ended: a leg's INVITE that is answered
    /// and whose transaction is over is only read again for its dialog fields (a late 2xx
    /// from another fork is released with a dialog built from leg B's INVITE), so the rest of
    /// it — body, Record-Route, User-Agent and the like — is dropped. An established call
    /// keeps a few hundred bytes of its INVITEs instead of a few KiB.
    pub fn on_transaction_over(&mut self, tx: TxId) {
        match tx {
            TxId::Server(tx) if tx == self.a.invite_tx && self.a.final_sent.is_some() => {
                shed_to_dialog_fields(&mut self.a.invite);
            }
            TxId::Client(tx) if tx == self.b.invite_tx && self.b.final_received.is_some() => {
                shed_to_dialog_fields(&mut self.b.invite);
            }
            _ => {}
        }
    }

    /// Called when the call has ended: it lingers until its last transactions are over (up to
    /// 64·T1, far longer than a short call lasts), and in that time an INVITE whose final has
    /// crossed is only read for its dialog fields. Shedding the rest now rather than when the
    /// INVITE's transaction ends is what keeps a burst of short calls from holding every
    /// INVITE in full for half a minute.
    pub fn on_ended(&mut self) {
        if self.a.final_sent.is_some() {
            shed_to_dialog_fields(&mut self.a.invite);
        }
        if self.b.final_received.is_some() {
            shed_to_dialog_fields(&mut self.b.invite);
        }
    }

    pub fn dialog(&self, leg: Leg) -> Option<&Dialog> {
        match leg {
            Leg::A => self.a.dialog.as_ref(),
            Leg::B => self.b.dialog.as_ref(),
        }
    }

    pub fn dialog_mut(&mut self, leg: Leg) -> Option<&mut Dialog> {
        match leg {
            Leg::A => self.a.dialog.as_mut(),
            Leg::B => self.b.dialog.as_mut(),
        }
    }

    pub fn bye_sent(&self, leg: Leg) -> bool {
        self.bye_sent[leg.index()]
    }

    pub fn mark_bye_sent(&mut self, leg: Leg) {
        self.bye_sent[leg.index()] = true;
    }

    /// A relayed re-INVITE is still unanswered. It is pending on both legs' dialogs (as a
    /// server transaction on one, a client transaction on the other), so a new re-INVITE on
    /// either leg gets 491 (RFC 3261 §14.2).
    pub fn invite_pending(&self) -> bool {
        self.relays
            .values()
            .any(|r| r.request.method == Method::Invite && !r.answered)
    }
}

/// Keeps of a dialog-creating request what a dialog is built from (RFC 3261 §12.1): Call-ID,
/// From, To, CSeq, Contact and the top Via, plus the Request-URI.
fn shed_to_dialog_fields(request: &mut Request) {
    let mut via_kept = false;
    request.headers.retain(|h| match h.name {
        HeaderName::Via if !via_kept => {
            via_kept = true;
            true
        }
        HeaderName::CallId
        | HeaderName::From
        | HeaderName::To
        | HeaderName::CSeq
        | HeaderName::Contact => true,
        _ => false,
    });
    request.headers.shrink_to_fit();
    request.body = bytes::Bytes::new();
}
