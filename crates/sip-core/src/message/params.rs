//! `;name=value` parameter lists of URIs, Via and name-addr headers.

use std::fmt;

use super::ParseError;

/// An ordered list of `;name[=value]` parameters; names compare case-insensitively.
///
/// It exists so that URIs, Via and name-addrs share one parameter model that keeps order and
/// valueless parameters (`;rport`, `;lr`) and writes them back as they came.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Params(Vec<(String, Option<String>)>);

impl Params {
    /// Parses `;a=b;c;d="quoted;value"` (the leading `;` is optional).
    pub fn parse(text: &str) -> Result<Params, ParseError> {
        let mut params = Vec::new();
        for piece in split_semicolons(text) {
            let piece = piece.trim();
            if piece.is_empty() {
                continue;
            }
            let (name, value) = match piece.split_once('=') {
                Some((name, value)) => (name.trim(), Some(value.trim().to_owned())),
                None => (piece, None),
            };
            if name.is_empty() || !name.bytes().all(is_token_byte) {
                return Err(ParseError::InvalidHeader(format!(
                    "bad parameter {piece:?}"
                )));
            }
            params.push((name.to_owned(), value));
        }
        Ok(Params(params))
    }

    /// `Some(Some(value))` for `name=value`, `Some(None)` for a bare `name`, `None` if absent.
    pub fn get(&self, name: &str) -> Option<Option<&str>> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_deref())
    }

    /// The value of `name=value`, or `None` when absent or bare.
    pub fn value(&self, name: &str) -> Option<&str> {
        self.get(name).flatten()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    pub fn push(&mut self, name: &str, value: Option<&str>) {
        self.0.push((name.to_owned(), value.map(str::to_owned)));
    }

    /// Sets a parameter, replacing an existing one of the same name in place.
    pub fn set(&mut self, name: &str, value: Option<&str>) {
        match self
            .0
            .iter_mut()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            Some(slot) => slot.1 = value.map(str::to_owned),
            None => self.push(name, value),
        }
    }

    pub fn remove(&mut self, name: &str) {
        self.0.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, Option<&str>)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_deref()))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for Params {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, value) in &self.0 {
            match value {
                Some(value) => write!(f, ";{name}={value}")?,
                None => write!(f, ";{name}")?,
            }
        }
        Ok(())
    }
}

/// RFC 3261 `token` characters.
pub(crate) fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

/// Splits at `;` outside double quotes.
fn split_semicolons(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut in_quotes, mut escaped, mut start) = (false, false, 0);
    for (i, b) in text.bytes().enumerate() {
        if escaped {
            escaped = false;
            continue;
        }
        match b {
            b'\\' if in_quotes => escaped = true,
            b'"' => in_quotes = !in_quotes,
            b';' if !in_quotes => {
                out.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&text[start..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_get_and_write_back() {
        let p = Params::parse(";branch=z9hG4bK1;rport;Received=1.2.3.4;x=\"a;b\"").unwrap();
        assert_eq!(p.get("branch"), Some(Some("z9hG4bK1")));
        assert_eq!(p.get("RPORT"), Some(None));
        assert_eq!(p.value("received"), Some("1.2.3.4"));
        assert_eq!(p.value("x"), Some("\"a;b\""));
        assert_eq!(p.get("nope"), None);
        assert_eq!(
            p.to_string(),
            ";branch=z9hG4bK1;rport;Received=1.2.3.4;x=\"a;b\""
        );
        assert!(Params::parse(";a b=c").is_err());
    }
}
