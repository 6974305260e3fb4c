//! # b2bua
//!
//! The call logic of callbridge: the intent table, the two-leg call state machine, SDP
//! rewriting and the RTP relay. Built on [`sip_core`]; knows nothing of HTTP.
//!
//! Today it holds the [`intent::IntentTable`]; the call state machine arrives with the
//! call-flow issue.

pub mod intent;

pub use intent::{Intent, IntentTable, NoIntent};
pub use sip_core;
