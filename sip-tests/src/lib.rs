//! Helpers for end-to-end tests: scripted SIP user agents over real loopback sockets.
