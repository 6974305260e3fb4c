//! # b2bua
//!
//! The call logic of callbridge: the intent table, the two-leg call state machine, SDP
//! rewriting and the RTP relay. Built on [`sip_core`]; knows nothing of HTTP.
//!
//! Today it holds the [`intent::IntentTable`]; the call state machine arrives with the
//! call-flow issue.

pub mod control;
pub mod intent;
pub mod media;
pub mod outbound;
pub mod registry;

pub use control::CallControl;
pub use intent::{Intent, IntentTable, NoIntent};
pub use registry::{CallEvent, CallRecord, CallRegistry, CallState, EndCause, Party};
pub use sip_core;
