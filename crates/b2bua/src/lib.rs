//! # b2bua
//!
//! The call logic of callbridge, sans-IO: the intent table, the two-leg call state machine,
//! SDP rewriting and the media decisions. Built on [`sip_core`]; knows nothing of HTTP, and
//! binds no socket, spawns no task and reads no clock.
//!
//! ## The engine
//!
//! [`Engine`] holds every call of one callbridge instance. Like
//! [`TransactionLayer`](sip_core::transaction::TransactionLayer), under which it sits, it is a
//! plain state machine. Its inputs:
//!
//! - SIP messages from the transport ([`Engine::handle_message`]) and transport failures
//!   ([`Engine::handle_transport_error`]);
//! - media events from the media driver ([`Engine::handle_media_event`]: a stream opened or
//!   failed to open, a stream's counters);
//! - requests of the HTTP API that need the engine, carried to its task by the binary
//!   ([`Engine::hang_up_by_api`], answered with an [`engine::ApiHangup`]);
//! - how far behind its input it is ([`Engine::set_input_wait`], [`Engine::set_input_backlog`]),
//!   by which it sheds new INVITEs;
//! - time: [`Engine::handle_timeout`] once the deadline of [`Engine::poll_timeout`] has passed,
//!   and once at start-up (it sends the first trunk ping, when `trunk.ping_secs` is on).
//!   Every input carries `now`; the engine never asks the clock.
//!
//! Its outputs, drained after each input:
//!
//! - datagrams and stream writes to send ([`Engine::poll_transmit`]);
//! - media commands for the driver ([`Engine::poll_media_command`]: open, set remote, close,
//!   report a stream);
//! - the next deadline ([`Engine::poll_timeout`]);
//! - call records and intents, written through [`CallControl`] (shared with the HTTP API).
//!
//! The run loop (the binary's SIP task, here with the I/O left as comments):
//!
//! ```no_run
//! # use std::time::Instant;
//! # use b2bua::{Engine, MediaCommand, MediaEvent};
//! # fn run(mut engine: Engine, clock: impl Fn() -> Instant) {
//! // Start-up: the first trunk ping (with `trunk.ping_secs` on) goes out now.
//! engine.handle_timeout(clock());
//! loop {
//!     let _deadline = engine.poll_timeout();
//!     // Wait for a datagram, a media report or the deadline, then feed it with the time:
//!     let now = clock();
//!     engine.handle_timeout(now);
//!     // Carry out media commands; each may produce an event, fed back at once.
//!     while let Some(command) = engine.poll_media_command() {
//!         if let MediaCommand::Open { stream, .. } = command {
//!             // … bind the sockets, then:
//!             engine.handle_media_event(now, MediaEvent::Opened { stream });
//!         }
//!     }
//!     while let Some(_transmit) = engine.poll_transmit() {
//!         // … hand the bytes to the transport.
//!     }
//! #   break;
//! }
//! # }
//! ```
//!
//! ## Modules
//!
//! - [`intent`], [`registry`] and [`numbers`], shared with the HTTP API through
//!   [`CallControl`];
//! - [`engine`]: the B2BUA (every call's two legs over one transaction layer), with the trust
//!   boundary at its door: untrusted sources answered statelessly or not at all, new INVITEs
//!   shed with a stateless 503 under overload, in-dialog requests only from the leg's peer;
//! - [`call`]: the state of one call; [`outbound`]: what callbridge writes on each leg;
//! - [`media`]: the one place where SDP is touched (rewritten so that it names nothing of its
//!   origin), the relay port pool (ports drawn at random), the media commands and events;
//! - [`refusal`]: why an incoming call was refused;
//! - [`auth`]: digest answers to the trunk's 401/407 challenges, and when to stop trying;
//! - [`registration`]: callbridge's own registration at the trunk (`trunk.register`);
//! - [`body`]: multipart (SIP-I) bodies reduced to their SDP as they enter the engine;
//! - [`session_timer`]: session timer negotiation (RFC 4028) for both legs;
//! - [`trunk_health`]: whether the trunk answers callbridge's OPTIONS pings
//!   (`trunk.ping_secs`), and so whether new calls are worth trying.
//! - [`shared_intents`]: the intent table of a cluster ([`SharedIntents`], Redis in crate
//!   `cluster`), whose claims the engine asks its driver for instead of making them itself.

pub mod auth;
pub mod body;
pub mod call;
pub mod control;
pub mod engine;
pub mod events;
pub mod intent;
pub mod media;
pub mod numbers;
pub mod outbound;
pub mod refusal;
pub mod registration;
pub mod registry;
pub mod session_timer;
pub mod shared_intents;
pub mod trunk_health;

pub use call::Leg;
pub use control::CallControl;
pub use engine::{Engine, EngineConfig, EngineStats};
pub use events::{EventKind, WebhookEvent};
pub use intent::{normalize_number, Intent, IntentTable, IntentTableFull, NoIntent};
pub use media::{MediaCommand, MediaEvent, StreamId};
pub use numbers::NumberTable;
pub use refusal::Refusal;
pub use registry::{
    CallEvent, CallExtras, CallRecord, CallRegistry, CallState, EndCause, Party, WallClock,
};
pub use shared_intents::{SharedClaim, SharedError, SharedIntent, SharedIntents};
pub use sip_core;
pub use trunk_health::{TrunkHealth, TrunkState};
