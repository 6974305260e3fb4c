//! # callbridge
//!
//! The process around the libraries: configuration ([`config`]), the store ([`persistence`]),
//! the trunk's RFC 3263 resolution ([`trunk_dns`]),
//! the wiring of transport,
//! engine, sweeper and HTTP API ([`start`]), and the status the API and tests read
//! ([`SharedStatus`]). The `callbridge` binary is a thin `main` over this crate; `sip-tests`
//! starts the same thing in-process.

mod actions;
mod claims;
mod cluster_node;
pub mod config;
mod media_driver;
pub mod persistence;
mod runtime;
mod status;
pub mod trunk_dns;

pub use runtime::{start, Running, StartError};
pub use status::{HeapProbe, SharedStatus};
