//! # b2bua
//!
//! The call logic of callbridge: the intent table, the two-leg call state machine, SDP
//! rewriting and the RTP relay. Built on [`sip_core`]; knows nothing of HTTP.
//!
//! - [`intent`] and [`registry`], shared with the HTTP API through [`CallControl`];
//! - [`engine`]: the sans-IO B2BUA (every call's two legs over one transaction layer);
//! - [`call`]: the state of one call; [`outbound`]: what callbridge writes on each leg;
//! - [`media`]: the one seam where SDP is touched.

pub mod call;
pub mod control;
pub mod engine;
pub mod intent;
pub mod media;
pub mod outbound;
pub mod registry;

pub use control::CallControl;
pub use engine::{Engine, EngineConfig, EngineStats};
pub use intent::{normalize_number, Intent, IntentTable, IntentTableFull, NoIntent};
pub use registry::{CallEvent, CallRecord, CallRegistry, CallState, EndCause, Party};
pub use sip_core;
