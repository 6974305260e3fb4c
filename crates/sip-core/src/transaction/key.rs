//! Transaction matching keys (RFC 3261 §17.1.3 and §17.2.3).

use crate::message::{Headers, Method, Request, Response, Via};

/// Matches a response to the client transaction that sent its request (§17.1.3): the branch
/// of the top Via and the CSeq method (a CANCEL shares its INVITE's branch).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ClientKey {
    branch: Box<str>,
    method: Method,
}

impl ClientKey {
    pub(crate) fn new(branch: &str, method: Method) -> ClientKey {
        ClientKey {
            branch: branch.into(),
            method,
        }
    }

    pub(crate) fn for_response(response: &Response) -> Option<ClientKey> {
        let via = response.headers.top_via().ok()?;
        let cseq = response.headers.cseq().ok()?;
        Some(ClientKey::new(via.branch()?, cseq.method))
    }
}

/// Matches a request to its server transaction (§17.2.3).
///
/// With an RFC 3261 branch: branch, sent-by and method, where an ACK matches the INVITE it
/// acknowledges. Without one (RFC 2543 peers): Request-URI, From tag, Call-ID, CSeq number,
/// top Via and method. The To tag is left out of the RFC 2543 key on purpose: the INVITE has
/// none and the ACK carries ours, and both must find the same transaction.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum ServerKey {
    Rfc3261 {
        branch: Box<str>,
        sent_by: Box<str>,
        method: Method,
    },
    Rfc2543 {
        request_uri: Box<str>,
        from_tag: Box<str>,
        call_id: Box<str>,
        cseq: u32,
        top_via: Box<str>,
        method: Method,
    },
}

/// Why a request cannot be given a transaction key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Unkeyable;

impl ServerKey {
    /// The key of the transaction `request` belongs to, and its parsed top Via (which the
    /// caller needs too: parsed once per message). ACK is keyed as the INVITE it
    /// acknowledges.
    pub(crate) fn for_request(request: &Request) -> Result<(ServerKey, Via), Unkeyable> {
        let via = request.headers.top_via().map_err(|_| Unkeyable)?;
        let method = match request.method {
            Method::Ack => Method::Invite,
            ref other => other.clone(),
        };
        let key = Self::with_method(request, &via, method)?;
        Ok((key, via))
    }

    /// The key of the INVITE transaction a CANCEL cancels (§9.2: same key, method INVITE).
    pub(crate) fn cancelled_invite(cancel: &Request) -> Result<ServerKey, Unkeyable> {
        let via = cancel.headers.top_via().map_err(|_| Unkeyable)?;
        Self::with_method(cancel, &via, Method::Invite)
    }

    fn with_method(request: &Request, via: &Via, method: Method) -> Result<ServerKey, Unkeyable> {
        if via.has_rfc3261_branch() {
            let branch = via.branch().ok_or(Unkeyable)?;
            return Ok(ServerKey::Rfc3261 {
                branch: branch.into(),
                sent_by: via.sent_by().to_ascii_lowercase().into(),
                method,
            });
        }
        let from_tag = request
            .headers
            .from()
            .ok()
            .and_then(|f| f.tag().map(str::to_owned))
            .unwrap_or_default();
        let call_id = request.headers.call_id().ok_or(Unkeyable)?;
        let cseq = request.headers.cseq().map_err(|_| Unkeyable)?;
        let mut top_via = via.clone();
        // received/rport are stamped by our own transport; they are not part of the peer's Via.
        top_via.params.remove("received");
        top_via.params.remove("rport");
        Ok(ServerKey::Rfc2543 {
            request_uri: request.uri.as_str().into(),
            from_tag: from_tag.into(),
            call_id: call_id.into(),
            cseq: cseq.seq,
            top_via: top_via.to_string().into(),
            method,
        })
    }
}

/// Matches the ACK for a 2xx (a new transaction with its own branch, §13.2.2.4) to the INVITE
/// server transaction that is retransmitting that 2xx (RFC 6026 Accepted state).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct AckKey {
    call_id: Box<str>,
    cseq: u32,
    from_tag: Box<str>,
}

impl AckKey {
    /// From an ACK, or from the 2xx it acknowledges (which copied these headers from the
    /// INVITE): Call-ID, CSeq number and From tag are the same in all three.
    pub(crate) fn from_headers(headers: &Headers) -> Option<AckKey> {
        let from = headers.from().ok()?;
        Some(AckKey {
            call_id: headers.call_id()?.into(),
            cseq: headers.cseq().ok()?.seq,
            from_tag: from.tag().unwrap_or_default().into(),
        })
    }
}
