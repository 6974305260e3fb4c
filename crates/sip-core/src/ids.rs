//! Fresh identifiers: branches, tags and Call-IDs.
//!
//! They must be unique across restarts and unguessable enough that a stray or spoofed message
//! cannot match a live transaction or dialog, so they come from a random source, not a counter.

use rand::Rng;

use crate::message::BRANCH_MAGIC_COOKIE;

const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

fn random_token(len: usize) -> String {
    let mut rng = rand::thread_rng();
    (0..len)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

/// A Via branch with the RFC 3261 magic cookie (`z9hG4bK` + 16 random characters).
pub fn new_branch() -> String {
    let mut branch = String::with_capacity(BRANCH_MAGIC_COOKIE.len() + 16);
    branch.push_str(BRANCH_MAGIC_COOKIE);
    branch.push_str(&random_token(16));
    branch
}

/// A From/To tag (12 random characters, ≥ 32 bits of randomness per RFC 3261 §19.3).
pub fn new_tag() -> String {
    random_token(12)
}

/// A Call-ID: 24 random characters `@` the given host.
pub fn new_call_id(host: &str) -> String {
    format!("{}@{}", random_token(24), host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_fresh_and_well_formed() {
        let a = new_branch();
        assert!(a.starts_with("z9hG4bK") && a.len() == 23);
        assert_ne!(a, new_branch());
        assert_ne!(new_tag(), new_tag());
        assert!(new_call_id("127.0.0.1").ends_with("@127.0.0.1"));
    }
}
