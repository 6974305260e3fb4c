//! # b2bua
//!
//! The call logic of callbridge: the intent table, the two-leg call state machine, SDP
//! rewriting and the RTP relay. Built on [`sip_core`]; knows nothing of HTTP.
//!
//! This crate is filled in by the call-flow issue; for now it only fixes the dependency
//! direction `callbridge → api → b2bua → sip-core`.

pub use sip_core;
