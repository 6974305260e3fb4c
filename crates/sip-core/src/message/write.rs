//! [`Request`]/[`Response`] → bytes. Header rows are written one per line in long form;
//! `Content-Length` is always recomputed from the body, whatever the rows said.

use std::fmt::Write as _;

use bytes::{BufMut, Bytes, BytesMut};

use super::header::{HeaderName, Headers};
use super::{Request, Response};

pub(crate) fn write_request(request: &Request) -> Bytes {
    let mut out = BytesMut::with_capacity(estimate(&request.headers, request.body.len()));
    let mut line = String::with_capacity(96);
    let _ = write!(line, "{} {} SIP/2.0\r\n", request.method, request.uri);
    out.put_slice(line.as_bytes());
    finish(out, &request.headers, &request.body)
}

pub(crate) fn write_response(response: &Response) -> Bytes {
    let mut out = BytesMut::with_capacity(estimate(&response.headers, response.body.len()));
    let mut line = String::with_capacity(48);
    let _ = write!(line, "SIP/2.0 {} {}\r\n", response.status, response.reason);
    out.put_slice(line.as_bytes());
    finish(out, &response.headers, &response.body)
}

fn estimate(headers: &Headers, body: usize) -> usize {
    128 + body
        + headers
            .iter()
            .map(|h| h.value.len() + h.name.as_str().len() + 4)
            .sum::<usize>()
}

fn finish(mut out: BytesMut, headers: &Headers, body: &[u8]) -> Bytes {
    for row in headers.iter() {
        if row.name == HeaderName::ContentLength {
            continue;
        }
        out.put_slice(row.name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(row.value.as_bytes());
        out.put_slice(b"\r\n");
    }
    out.put_slice(b"Content-Length: ");
    out.put_slice(body.len().to_string().as_bytes());
    out.put_slice(b"\r\n\r\n");
    out.put_slice(body);
    out.freeze()
}
