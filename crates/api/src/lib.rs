//! # api
//!
//! The HTTP API of callbridge (makecall, cancelcall, cti/callin, call status, health, metrics)
//! over the handles the [`b2bua`] crate exports. Filled in by the call-flow issue.

pub use b2bua;
