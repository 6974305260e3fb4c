//! [`ApiBody`]: the body of every response — a whole JSON document, or a stream (the export).

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use tokio::sync::mpsc;

/// A response body. Most answers are one buffer ([`ApiBody::full`]); `GET /api/calls/export`
/// streams chunks that a producer task sends through a bounded channel, so that an export of a
/// million records holds one page in memory and waits for a slow client instead of buffering.
#[derive(Debug)]
pub enum ApiBody {
    Full(Full<Bytes>),
    Stream(mpsc::Receiver<Bytes>),
}

impl ApiBody {
    /// A body of one buffer.
    pub fn full(bytes: impl Into<Bytes>) -> ApiBody {
        ApiBody::Full(Full::new(bytes.into()))
    }
}

impl Body for ApiBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            ApiBody::Full(full) => Pin::new(full).poll_frame(cx),
            // The producer ends the body by dropping its sender (also when it fails midway:
            // a chunked body cut short is how a streaming client learns of it).
            ApiBody::Stream(chunks) => chunks
                .poll_recv(cx)
                .map(|chunk| chunk.map(|bytes| Ok(Frame::data(bytes)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ApiBody::Full(full) => full.is_end_stream(),
            ApiBody::Stream(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ApiBody::Full(full) => full.size_hint(),
            ApiBody::Stream(_) => SizeHint::default(),
        }
    }
}
