//! Fuzz target for the SIP message parser: any input is either rejected with an error (and a
//! 400 can be built for it), or parsed into a message whose written form parses back to the
//! same message (folded header values included) and writes to the same bytes again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sip_core::message::bad_request_for;
use sip_core::{Message, ParseLimits};

fuzz_target!(|data: &[u8]| {
    let limits = ParseLimits::default();
    match Message::parse(data, &limits) {
        Ok(message) => {
            let written = message.to_bytes();
            // The written form uses long header names and may outgrow the input's limit.
            let roomy = ParseLimits {
                max_message_size: usize::MAX,
                max_headers: usize::MAX,
            };
            let again = Message::parse(&written, &roomy).unwrap_or_else(|e| {
                panic!(
                    "written form does not re-parse: {e:?}\nwritten: {:?}",
                    String::from_utf8_lossy(&written)
                )
            });
            assert_eq!(again, message, "write→parse changed the message");
            assert_eq!(again.to_bytes(), written, "writing is not a fixed point");
        }
        Err(error) => {
            if let Some(response) = bad_request_for(data, &error, &limits) {
                assert_eq!(response.status, 400);
                let _ = response.to_bytes();
            }
        }
    }
});
