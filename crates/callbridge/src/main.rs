//! The `callbridge` binary: configuration, logging, wiring and signals.

mod config;

fn main() {}
