//! Header names (long and compact forms) and the ordered header list of a message.

use std::fmt;

/// A header name, resolved case-insensitively and from its compact form.
///
/// It exists because rsip 0.4 turns compact names (`v`, `f`, `i`, ...) into unknown headers and
/// compares names case-sensitively; everything above sip-core sees one canonical name instead.
#[derive(Clone, Debug)]
pub enum HeaderName {
    Via,
    From,
    To,
    CallId,
    CSeq,
    Contact,
    ContentLength,
    ContentType,
    ContentEncoding,
    MaxForwards,
    Route,
    RecordRoute,
    Supported,
    Subject,
    Event,
    ReferTo,
    ReferredBy,
    AllowEvents,
    SessionExpires,
    Allow,
    Require,
    Reason,
    Expires,
    UserAgent,
    Server,
    PAssertedIdentity,
    /// Any other header, with the name as written on the wire (compared case-insensitively).
    Other(Box<str>),
}

/// `(long form, compact form, variant)` for every known header.
const KNOWN: &[(&str, Option<u8>, HeaderName)] = &[
    ("Via", Some(b'v'), HeaderName::Via),
    ("From", Some(b'f'), HeaderName::From),
    ("To", Some(b't'), HeaderName::To),
    ("Call-ID", Some(b'i'), HeaderName::CallId),
    ("CSeq", None, HeaderName::CSeq),
    ("Contact", Some(b'm'), HeaderName::Contact),
    ("Content-Length", Some(b'l'), HeaderName::ContentLength),
    ("Content-Type", Some(b'c'), HeaderName::ContentType),
    ("Content-Encoding", Some(b'e'), HeaderName::ContentEncoding),
    ("Max-Forwards", None, HeaderName::MaxForwards),
    ("Route", None, HeaderName::Route),
    ("Record-Route", None, HeaderName::RecordRoute),
    ("Supported", Some(b'k'), HeaderName::Supported),
    ("Subject", Some(b's'), HeaderName::Subject),
    ("Event", Some(b'o'), HeaderName::Event),
    ("Refer-To", Some(b'r'), HeaderName::ReferTo),
    ("Referred-By", Some(b'b'), HeaderName::ReferredBy),
    ("Allow-Events", Some(b'u'), HeaderName::AllowEvents),
    ("Session-Expires", Some(b'x'), HeaderName::SessionExpires),
    ("Allow", None, HeaderName::Allow),
    ("Require", None, HeaderName::Require),
    ("Reason", None, HeaderName::Reason),
    ("Expires", None, HeaderName::Expires),
    ("User-Agent", None, HeaderName::UserAgent),
    ("Server", None, HeaderName::Server),
    ("P-Asserted-Identity", None, HeaderName::PAssertedIdentity),
];

impl HeaderName {
    /// Resolves a name as found on the wire: any case, long or compact form.
    pub fn parse(name: &str) -> HeaderName {
        let bytes = name.as_bytes();
        if bytes.len() == 1 {
            let c = bytes[0].to_ascii_lowercase();
            for (_, compact, known) in KNOWN {
                if *compact == Some(c) {
                    return known.clone();
                }
            }
        }
        for (long, _, known) in KNOWN {
            if long.len() == name.len() && long.eq_ignore_ascii_case(name) {
                return known.clone();
            }
        }
        HeaderName::Other(name.into())
    }

    /// The long form written on the wire.
    pub fn as_str(&self) -> &str {
        if let HeaderName::Other(name) = self {
            return name;
        }
        KNOWN
            .iter()
            .find(|(_, _, known)| known == self)
            .map(|(long, _, _)| *long)
            .unwrap_or("X-Unknown")
    }

    /// Headers whose value may be a comma-separated list of entries (RFC 3261 §7.3.1) and that
    /// sip-core splits into one row per entry so that "the top Via" means one value.
    pub fn is_multi_value(&self) -> bool {
        matches!(
            self,
            HeaderName::Via | HeaderName::Contact | HeaderName::Route | HeaderName::RecordRoute
        )
    }
}

impl PartialEq for HeaderName {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (HeaderName::Other(a), HeaderName::Other(b)) => a.eq_ignore_ascii_case(b),
            _ => std::mem::discriminant(self) == std::mem::discriminant(other),
        }
    }
}
impl Eq for HeaderName {}

impl fmt::Display for HeaderName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&str> for HeaderName {
    fn from(name: &str) -> Self {
        HeaderName::parse(name)
    }
}

/// One header row: a name and its value, trimmed and unfolded.
///
/// It exists as the unit of [`Headers`]: order is kept row by row, and a multi-value header
/// has one row per entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub name: HeaderName,
    pub value: String,
}

/// The ordered header rows of a message. Multi-value headers hold one entry per row.
///
/// Order matters (Via and Route order is routing), so this is a list, not a map; messages carry
/// 10–20 rows, where a linear scan beats hashing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers {
    rows: Vec<Header>,
}

impl Headers {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            rows: Vec::with_capacity(capacity),
        }
    }

    /// The value of the first row with this name.
    pub fn get(&self, name: &HeaderName) -> Option<&str> {
        self.rows
            .iter()
            .find(|h| &h.name == name)
            .map(|h| h.value.as_str())
    }

    /// The value of the first row with this name, to rewrite in place (the row keeps its
    /// position; every other row is untouched).
    pub fn get_mut(&mut self, name: &HeaderName) -> Option<&mut String> {
        self.rows
            .iter_mut()
            .find(|h| &h.name == name)
            .map(|h| &mut h.value)
    }

    /// Every value with this name, in message order.
    pub fn get_all<'a>(&'a self, name: &'a HeaderName) -> impl Iterator<Item = &'a str> + 'a {
        self.rows
            .iter()
            .filter(move |h| &h.name == name)
            .map(|h| h.value.as_str())
    }

    pub fn contains(&self, name: &HeaderName) -> bool {
        self.rows.iter().any(|h| &h.name == name)
    }

    /// Appends a row at the end.
    pub fn push(&mut self, name: HeaderName, value: impl Into<String>) {
        self.rows.push(Header {
            name,
            value: value.into(),
        });
    }

    /// Inserts a row before every other row of the same name (a new top Via, for instance),
    /// or at the end when there is none.
    pub fn push_front(&mut self, name: HeaderName, value: impl Into<String>) {
        let at = self
            .rows
            .iter()
            .position(|h| h.name == name)
            .unwrap_or(self.rows.len());
        self.rows.insert(
            at,
            Header {
                name,
                value: value.into(),
            },
        );
    }

    /// Replaces every row of this name with one row holding `value`, kept where the first was.
    pub fn set(&mut self, name: HeaderName, value: impl Into<String>) {
        let value = value.into();
        match self.rows.iter().position(|h| h.name == name) {
            Some(at) => {
                self.rows[at].value = value;
                let mut index = 0;
                self.rows.retain(|h| {
                    let keep = index <= at || h.name != name;
                    index += 1;
                    keep
                });
            }
            None => self.push(name, value),
        }
    }

    /// Removes the first row with this name and returns its value.
    pub fn remove_first(&mut self, name: &HeaderName) -> Option<String> {
        let at = self.rows.iter().position(|h| &h.name == name)?;
        Some(self.rows.remove(at).value)
    }

    /// Removes every row with this name.
    pub fn remove_all(&mut self, name: &HeaderName) {
        self.rows.retain(|h| &h.name != name);
    }

    /// Keeps only the rows the predicate accepts.
    /// Releases the spare capacity of the rows (for messages kept long after parsing).
    pub fn shrink_to_fit(&mut self) {
        self.rows.shrink_to_fit();
    }

    pub fn retain(&mut self, keep: impl FnMut(&Header) -> bool) {
        self.rows.retain(keep);
    }

    pub fn iter(&self) -> impl Iterator<Item = &Header> {
        self.rows.iter()
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// Splits a header value at top-level commas: commas inside double quotes (with `\` escapes)
/// or inside `<...>` do not separate entries. Empty entries are skipped.
pub fn split_top_level_commas(value: &str) -> impl Iterator<Item = &str> {
    let mut pieces = Vec::new();
    let bytes = value.as_bytes();
    let (mut in_quotes, mut in_angle, mut escaped) = (false, false, false);
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if escaped {
            escaped = false;
            continue;
        }
        match b {
            b'\\' if in_quotes => escaped = true,
            b'"' if !in_angle => in_quotes = !in_quotes,
            b'<' if !in_quotes => in_angle = true,
            b'>' if !in_quotes => in_angle = false,
            b',' if !in_quotes && !in_angle => {
                pieces.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    pieces.push(&value[start..]);
    pieces.into_iter().map(str::trim).filter(|p| !p.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_case_insensitively_and_from_compact_forms() {
        for (wire, expected) in [
            ("via", HeaderName::Via),
            ("V", HeaderName::Via),
            ("f", HeaderName::From),
            ("t", HeaderName::To),
            ("i", HeaderName::CallId),
            ("CALL-ID", HeaderName::CallId),
            ("m", HeaderName::Contact),
            ("l", HeaderName::ContentLength),
            ("c", HeaderName::ContentType),
            ("k", HeaderName::Supported),
            ("s", HeaderName::Subject),
            ("e", HeaderName::ContentEncoding),
            ("o", HeaderName::Event),
            ("r", HeaderName::ReferTo),
            ("u", HeaderName::AllowEvents),
            ("x", HeaderName::SessionExpires),
            ("cseq", HeaderName::CSeq),
            ("record-route", HeaderName::RecordRoute),
        ] {
            assert_eq!(HeaderName::parse(wire), expected, "{wire}");
        }
        assert_eq!(HeaderName::parse("X-Foo"), HeaderName::parse("x-foo"));
        assert_eq!(HeaderName::parse("X-Foo").as_str(), "X-Foo");
        assert_eq!(HeaderName::parse("i").as_str(), "Call-ID");
    }

    #[test]
    fn commas_inside_quotes_and_angle_brackets_do_not_split() {
        let parts: Vec<_> =
            split_top_level_commas(r#""Bob, \"Jr\"" <sip:b@x;p=a,b>;q=1 , <sip:c@y>,sip:d@z"#)
                .collect();
        assert_eq!(
            parts,
            vec![
                r#""Bob, \"Jr\"" <sip:b@x;p=a,b>;q=1"#,
                "<sip:c@y>",
                "sip:d@z"
            ]
        );
    }

    #[test]
    fn get_mut_rewrites_only_the_first_row_of_the_name() {
        let mut h = Headers::new();
        h.push(HeaderName::To, "t");
        h.push(HeaderName::Via, "a");
        h.push(HeaderName::Via, "b");
        *h.get_mut(&HeaderName::Via).unwrap() = "c".into();
        let rows: Vec<_> = h.iter().map(|r| r.value.as_str()).collect();
        assert_eq!(rows, vec!["t", "c", "b"]);
        assert!(h.get_mut(&HeaderName::Route).is_none());
    }

    #[test]
    fn set_replaces_all_rows_in_place() {
        let mut h = Headers::new();
        h.push(HeaderName::Via, "a");
        h.push(HeaderName::To, "t");
        h.push(HeaderName::Via, "b");
        h.set(HeaderName::Via, "c");
        let rows: Vec<_> = h.iter().map(|r| r.value.as_str()).collect();
        assert_eq!(rows, vec!["c", "t"]);
        h.push_front(HeaderName::Via, "top");
        assert_eq!(h.get(&HeaderName::Via), Some("top"));
    }
}
