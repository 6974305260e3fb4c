//! SIP messages: parsing from bytes, writing to bytes, typed access to the headers the layers
//! above need, and the requests derived from an INVITE by rule: its CANCEL ([`build_cancel`],
//! RFC 3261 §9.1) and the ACK for a non-2xx final response ([`build_ack_for_non_2xx`],
//! §17.1.1.3), in `builders.rs`.
//!
//! rsip 0.4 is the URI grammar underneath ([`Uri`]); the message framing, header model and typed
//! headers are sip-core's own, because rsip 0.4 ignores compact header names, does not frame by
//! `Content-Length`, writes bodies through a lossy UTF-8 conversion, rejects folded lines and
//! whitespace before `:`, and reads only one value of a multi-value header. See `parse.rs`.

mod builders;
mod header;
mod params;
mod parse;
mod typed;
mod uri;
mod write;

use std::fmt;

use bytes::Bytes;

pub use builders::{build_ack_for_non_2xx, build_cancel};
pub use header::{split_top_level_commas, Header, HeaderName, Headers};
pub use params::Params;
pub use parse::{bad_request_for, find_head_end, ParseLimits};
pub use typed::{CSeq, NameAddr, Transport, Via, BRANCH_MAGIC_COOKIE};
pub use uri::{Scheme, Uri};

/// Why bytes from the wire are not a SIP message.
///
/// It exists so that a refusal says what was wrong: the transport logs it and puts it in the
/// reason phrase of the 400 it answers with ([`bad_request_for`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("message of {size} bytes exceeds the {max}-byte limit")]
    TooLarge { size: usize, max: usize },
    #[error("no blank line ends the header section")]
    Incomplete,
    #[error("header section is not valid UTF-8")]
    NotUtf8,
    #[error("invalid start line: {0}")]
    InvalidStartLine(String),
    #[error("invalid header: {0}")]
    InvalidHeader(String),
    #[error("invalid URI: {0}")]
    InvalidUri(String),
    #[error("missing mandatory header {0}")]
    MissingHeader(&'static str),
    #[error("more than {0} header rows")]
    TooManyHeaders(usize),
    #[error("Content-Length {declared} but only {available} body bytes")]
    BodyTruncated { declared: usize, available: usize },
    #[error("CSeq method {cseq} does not match request method {method}")]
    CSeqMethodMismatch { method: String, cseq: String },
}

/// A SIP method. Unknown methods are kept (rsip 0.4 rejects them), so that the UAS core can
/// answer them with 501 instead of treating the request as garbage.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    Invite,
    Ack,
    Bye,
    Cancel,
    Options,
    Register,
    Update,
    Info,
    Prack,
    Refer,
    Notify,
    Subscribe,
    Message,
    Publish,
    Other(Box<str>),
}

impl Method {
    /// Parses a method token (case-sensitive, RFC 3261 §7.1).
    pub fn parse(text: &str) -> Result<Method, ParseError> {
        Ok(match text {
            "INVITE" => Method::Invite,
            "ACK" => Method::Ack,
            "BYE" => Method::Bye,
            "CANCEL" => Method::Cancel,
            "OPTIONS" => Method::Options,
            "REGISTER" => Method::Register,
            "UPDATE" => Method::Update,
            "INFO" => Method::Info,
            "PRACK" => Method::Prack,
            "REFER" => Method::Refer,
            "NOTIFY" => Method::Notify,
            "SUBSCRIBE" => Method::Subscribe,
            "MESSAGE" => Method::Message,
            "PUBLISH" => Method::Publish,
            other => {
                if other.is_empty() || other.len() > 128 || !other.bytes().all(params_token) {
                    return Err(ParseError::InvalidStartLine(format!(
                        "bad method {:?}",
                        uri::truncate(other)
                    )));
                }
                Method::Other(other.into())
            }
        })
    }

    pub fn as_str(&self) -> &str {
        match self {
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Options => "OPTIONS",
            Method::Register => "REGISTER",
            Method::Update => "UPDATE",
            Method::Info => "INFO",
            Method::Prack => "PRACK",
            Method::Refer => "REFER",
            Method::Notify => "NOTIFY",
            Method::Subscribe => "SUBSCRIBE",
            Method::Message => "MESSAGE",
            Method::Publish => "PUBLISH",
            Method::Other(name) => name,
        }
    }
}

fn params_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A SIP request. Fields are public: upper layers build and rewrite requests freely, and the
/// writer recomputes `Content-Length` from `body`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    pub uri: Uri,
    pub headers: Headers,
    /// Raw body bytes, never converted to text.
    pub body: Bytes,
}

/// A SIP response.
///
/// Fields are public for the same reason as [`Request`]'s; [`Response::to_request`] copies
/// the headers a response must repeat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub reason: String,
    pub headers: Headers,
    pub body: Bytes,
}

/// A parsed SIP message.
///
/// It exists because bytes from the wire are either, and the parser and the transaction
/// layer's [`handle_message`](crate::transaction::TransactionLayer::handle_message) take both.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Request(Request),
    Response(Response),
}

impl Message {
    /// Parses one complete message (a UDP datagram, or a frame cut by the TCP framer).
    pub fn parse(buf: &[u8], limits: &ParseLimits) -> Result<Message, ParseError> {
        parse::parse_message(buf, limits)
    }

    pub fn headers(&self) -> &Headers {
        match self {
            Message::Request(r) => &r.headers,
            Message::Response(r) => &r.headers,
        }
    }

    pub fn headers_mut(&mut self) -> &mut Headers {
        match self {
            Message::Request(r) => &mut r.headers,
            Message::Response(r) => &mut r.headers,
        }
    }

    pub fn body(&self) -> &Bytes {
        match self {
            Message::Request(r) => &r.body,
            Message::Response(r) => &r.body,
        }
    }

    pub fn to_bytes(&self) -> Bytes {
        match self {
            Message::Request(r) => r.to_bytes(),
            Message::Response(r) => r.to_bytes(),
        }
    }
}

impl From<Request> for Message {
    fn from(r: Request) -> Self {
        Message::Request(r)
    }
}

impl From<Response> for Message {
    fn from(r: Response) -> Self {
        Message::Response(r)
    }
}

impl Request {
    /// A request with no headers and no body; the caller adds the headers it needs.
    pub fn new(method: Method, uri: Uri) -> Request {
        Request {
            method,
            uri,
            headers: Headers::with_capacity(12),
            body: Bytes::new(),
        }
    }

    pub fn to_bytes(&self) -> Bytes {
        write::write_request(self)
    }
}

impl Response {
    pub fn new(status: u16, reason: impl Into<String>) -> Response {
        Response {
            status,
            reason: reason.into(),
            headers: Headers::with_capacity(12),
            body: Bytes::new(),
        }
    }

    /// A response to `request` per RFC 3261 §8.2.6.2: Via rows, From, To, Call-ID and CSeq
    /// copied; a To tag is added by the caller where one is needed.
    pub fn to_request(request: &Request, status: u16, reason: Option<&str>) -> Response {
        let mut response = Response::new(status, reason.unwrap_or(default_reason(status)));
        response.headers = copy_response_headers(&request.headers);
        response
    }

    /// The status class: 1 for provisional, 2 for success, and so on.
    pub fn class(&self) -> u16 {
        self.status / 100
    }

    pub fn is_provisional(&self) -> bool {
        self.status < 200
    }

    pub fn to_bytes(&self) -> Bytes {
        write::write_response(self)
    }
}

pub(crate) fn copy_response_headers(from: &Headers) -> Headers {
    let mut headers = Headers::with_capacity(8);
    for row in from.iter() {
        if matches!(
            row.name,
            HeaderName::Via
                | HeaderName::From
                | HeaderName::To
                | HeaderName::CallId
                | HeaderName::CSeq
        ) {
            headers.push(row.name.clone(), row.value.clone());
        }
    }
    headers
}

/// Typed access to the headers the transaction, dialog and call layers read.
/// Each call parses the row it reads; rows are short and these are not read in loops.
impl Headers {
    pub fn call_id(&self) -> Option<&str> {
        self.get(&HeaderName::CallId)
    }

    pub fn cseq(&self) -> Result<CSeq, ParseError> {
        CSeq::parse(
            self.get(&HeaderName::CSeq)
                .ok_or(ParseError::MissingHeader("CSeq"))?,
        )
    }

    pub fn top_via(&self) -> Result<Via, ParseError> {
        Via::parse(
            self.get(&HeaderName::Via)
                .ok_or(ParseError::MissingHeader("Via"))?,
        )
    }

    pub fn vias(&self) -> Result<Vec<Via>, ParseError> {
        self.get_all(&HeaderName::Via).map(Via::parse).collect()
    }

    pub fn from(&self) -> Result<NameAddr, ParseError> {
        NameAddr::parse(
            self.get(&HeaderName::From)
                .ok_or(ParseError::MissingHeader("From"))?,
        )
    }

    pub fn to(&self) -> Result<NameAddr, ParseError> {
        NameAddr::parse(
            self.get(&HeaderName::To)
                .ok_or(ParseError::MissingHeader("To"))?,
        )
    }

    /// Contact entries (a `*` Contact is not a name-addr and yields an error).
    pub fn contacts(&self) -> Result<Vec<NameAddr>, ParseError> {
        self.name_addrs(&HeaderName::Contact)
    }

    pub fn routes(&self) -> Result<Vec<NameAddr>, ParseError> {
        self.name_addrs(&HeaderName::Route)
    }

    pub fn record_routes(&self) -> Result<Vec<NameAddr>, ParseError> {
        self.name_addrs(&HeaderName::RecordRoute)
    }

    /// The first P-Asserted-Identity entry (RFC 3325), when present.
    pub fn p_asserted_identity(&self) -> Option<Result<NameAddr, ParseError>> {
        self.get(&HeaderName::PAssertedIdentity)
            .map(|v| NameAddr::parse(split_top_level_commas(v).next().unwrap_or(v)))
    }

    pub fn max_forwards(&self) -> Option<Result<u32, ParseError>> {
        self.get(&HeaderName::MaxForwards).map(|v| {
            let v = v.trim();
            // 1*DIGIT (RFC 3261 §25.1): leading zeros are legal ("0068" is 68, RFC 4475).
            let significant = v.trim_start_matches('0');
            if v.is_empty() || significant.len() > 9 || !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err(ParseError::InvalidHeader(format!(
                    "bad Max-Forwards {:?}",
                    uri::truncate(v)
                )));
            }
            v.parse()
                .map_err(|_| ParseError::InvalidHeader("bad Max-Forwards".into()))
        })
    }

    pub fn content_type(&self) -> Option<&str> {
        self.get(&HeaderName::ContentType)
    }

    fn name_addrs(&self, name: &HeaderName) -> Result<Vec<NameAddr>, ParseError> {
        self.get_all(name).map(NameAddr::parse).collect()
    }
}

/// The reason phrase RFC 3261 §21 gives a status code.
pub fn default_reason(status: u16) -> &'static str {
    match status {
        100 => "Trying",
        180 => "Ringing",
        181 => "Call Is Being Forwarded",
        182 => "Queued",
        183 => "Session Progress",
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Request Entity Too Large",
        415 => "Unsupported Media Type",
        420 => "Bad Extension",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        482 => "Loop Detected",
        483 => "Too Many Hops",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        491 => "Request Pending",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Server Time-out",
        513 => "Message Too Large",
        600 => "Busy Everywhere",
        603 => "Decline",
        604 => "Does Not Exist Anywhere",
        606 => "Not Acceptable",
        _ => match status / 100 {
            1 => "Session Progress",
            2 => "OK",
            3 => "Redirect",
            4 => "Client Error",
            5 => "Server Error",
            _ => "Global Failure",
        },
    }
}
