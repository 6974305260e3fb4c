//! The dialog identifier (RFC 3261 §12): Call-ID, local tag and remote tag.

use std::fmt;

use crate::message::{Request, Response};

/// Identifies one dialog from one side's point of view (RFC 3261 §12).
///
/// It exists so that the call layer can key its dialog table and find the dialog an incoming
/// message belongs to. The same dialog has the local and remote tags swapped on the two UAs;
/// the constructors below take that into account, so both sides of one dialog compute the
/// id of *their* view from the messages they see.
///
/// Tags and the Call-ID are compared byte for byte. A missing tag on the peer's side (an RFC
/// 2543 peer) is kept as the empty string, which RFC 3261 §12.1 calls the "null" tag.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DialogId {
    pub call_id: String,
    pub local_tag: String,
    pub remote_tag: String,
}

impl DialogId {
    pub fn new(
        call_id: impl Into<String>,
        local_tag: impl Into<String>,
        remote_tag: impl Into<String>,
    ) -> DialogId {
        DialogId {
            call_id: call_id.into(),
            local_tag: local_tag.into(),
            remote_tag: remote_tag.into(),
        }
    }

    /// The id of the dialog an incoming request belongs to, seen from us as its UAS:
    /// local tag = To tag, remote tag = From tag (empty when the From has no tag).
    ///
    /// `None` when the request has no To tag (it is outside any dialog), no Call-ID, or
    /// unparsable From/To headers.
    pub fn for_incoming_request(request: &Request) -> Option<DialogId> {
        let call_id = request.headers.call_id()?;
        let to = request.headers.to().ok()?;
        let local_tag = to.tag()?;
        let from = request.headers.from().ok()?;
        Some(DialogId::new(
            call_id,
            local_tag,
            from.tag().unwrap_or_default(),
        ))
    }

    /// The id of the dialog an incoming response belongs to, seen from us as the UAC that
    /// sent the request: local tag = From tag, remote tag = To tag.
    ///
    /// `None` without a Call-ID, without a From tag (we always send one), or without a To tag
    /// on a non-2xx response. A 2xx without a To tag (an RFC 2543 peer) gets the empty remote
    /// tag, as RFC 3261 §12.1.2 asks.
    pub fn for_incoming_response(response: &Response) -> Option<DialogId> {
        let call_id = response.headers.call_id()?;
        let from = response.headers.from().ok()?;
        let local_tag = from.tag()?;
        let to = response.headers.to().ok()?;
        let remote_tag = match to.tag() {
            Some(tag) => tag,
            None if response.class() == 2 => "",
            None => return None,
        };
        Some(DialogId::new(call_id, local_tag, remote_tag))
    }

    /// The same dialog as the peer sees it (local and remote tags swapped).
    pub fn reversed(&self) -> DialogId {
        DialogId::new(
            self.call_id.clone(),
            self.remote_tag.clone(),
            self.local_tag.clone(),
        )
    }
}

impl fmt::Display for DialogId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{};local-tag={};remote-tag={}",
            self.call_id, self.local_tag, self.remote_tag
        )
    }
}
