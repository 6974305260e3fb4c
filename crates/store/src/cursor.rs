//! The opaque listing cursor: where the previous page stopped.
//!
//! A cursor is the (`created_at`, `callid`) of the last row of a page, the keyset of the
//! listing's order. The next page is every row strictly after it in that order, whatever was
//! inserted meanwhile: rows newer than the first page sort before the cursor and can never
//! shift a later page (an offset would). It is written `1.<created_at>.<callid as hex>`; the
//! leading `1` is the format's version. Clients must treat it as opaque; anything that does not
//! decode (or names a callid no row can have, one with a NUL) is [`StoreError::BadCursor`],
//! never a panic.

use crate::StoreError;

/// Longest cursor accepted: callids are short, so anything longer is not ours.
const MAX_CURSOR_LEN: usize = 512;

/// A decoded cursor (see the module's doc).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    /// `created_at` of the last row returned.
    pub created_at: u64,
    /// `callid` of the last row returned.
    pub callid: String,
}

impl Cursor {
    /// The cursor of the rows after `row` in the listing's order.
    pub fn after(row: &crate::CallRow) -> Cursor {
        Cursor {
            created_at: row.created_at,
            callid: row.callid.clone(),
        }
    }

    /// The text handed to clients as `next_cursor`.
    pub fn encode(&self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = String::with_capacity(24 + 2 * self.callid.len());
        out.push_str("1.");
        out.push_str(&self.created_at.to_string());
        out.push('.');
        for byte in self.callid.bytes() {
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0xf)]));
        }
        out
    }

    /// Parses a client's `cursor` parameter.
    pub fn decode(text: &str) -> Result<Cursor, StoreError> {
        if text.len() > MAX_CURSOR_LEN {
            return Err(StoreError::BadCursor);
        }
        let mut parts = text.split('.');
        let (Some("1"), Some(created_at), Some(hex), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(StoreError::BadCursor);
        };
        // Digits only: u64's parser would also take a leading '+'.
        if created_at.is_empty() || !created_at.bytes().all(|b| b.is_ascii_digit()) {
            return Err(StoreError::BadCursor);
        }
        let created_at: u64 = created_at.parse().map_err(|_| StoreError::BadCursor)?;
        if i64::try_from(created_at).is_err() || hex.len() % 2 != 0 {
            return Err(StoreError::BadCursor);
        }
        let bytes = hex
            .as_bytes()
            .chunks_exact(2)
            .map(|pair| Some((nibble(pair[0])? << 4) | nibble(pair[1])?))
            .collect::<Option<Vec<u8>>>()
            .ok_or(StoreError::BadCursor)?;
        let callid = String::from_utf8(bytes).map_err(|_| StoreError::BadCursor)?;
        // No stored callid holds a NUL (PostgreSQL's text cannot), so no cursor can: refused
        // here, the same on both backends, rather than by PostgreSQL's encoding check.
        if callid.contains('\0') {
            return Err(StoreError::BadCursor);
        }
        Ok(Cursor { created_at, callid })
    }
}

fn nibble(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for callid in ["", "1234567890123456789", "é/\"x"] {
            let cursor = Cursor {
                created_at: 1_764_650_000_123,
                callid: callid.to_owned(),
            };
            assert_eq!(Cursor::decode(&cursor.encode()).unwrap(), cursor);
        }
    }

    #[test]
    fn rejects_what_it_did_not_write() {
        let too_long = format!("1.5.{}", "ab".repeat(300));
        for bad in [
            "",
            "1",
            "1.",
            "1..",
            "1.5",
            "2.5.31",
            "1.+5.31",
            "1.-5.31",
            "1.5.3",
            "1.5.zz",
            "1.5.3A",
            "1.5.31.",
            "1.99999999999999999999.31",
            "1.9223372036854775808.31",
            "1.5.ff",
            "1.5.00",
            "1.5.610062",
            too_long.as_str(),
        ] {
            assert!(
                matches!(Cursor::decode(bad), Err(StoreError::BadCursor)),
                "{bad:?}"
            );
        }
    }
}
