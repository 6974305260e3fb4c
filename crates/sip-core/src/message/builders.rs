//! Requests built from other messages by rule rather than by a dialog: the CANCEL of an INVITE
//! and the ACK of a non-2xx final response. Both are hop-by-hop copies of the INVITE's
//! transaction identity, so they live here, next to the message model, for every user that must
//! produce them byte for byte like the transaction layer does (the layer itself, and test user
//! agents).

use super::{HeaderName, Method, Request, Response};

/// The CANCEL for `invite`, per RFC 3261 §9.1: the INVITE's Request-URI, Call-ID, From, To
/// and CSeq number (method CANCEL), its top Via only (branch included, so that the CANCEL
/// matches the INVITE's transaction at the next hop, §9.2), its Max-Forwards and its Route
/// set. No body.
///
/// It exists so that the INVITE client transaction (which sends the CANCEL itself, deferred
/// until a provisional response, §9.1) and anything else cancelling an INVITE build the same
/// request.
pub fn build_cancel(invite: &Request) -> Request {
    let mut cancel = Request::new(Method::Cancel, invite.uri.clone());
    if let Some(via) = invite.headers.get(&HeaderName::Via) {
        cancel.headers.push(HeaderName::Via, via);
    }
    for name in [
        HeaderName::MaxForwards,
        HeaderName::From,
        HeaderName::To,
        HeaderName::CallId,
    ] {
        if let Some(value) = invite.headers.get(&name) {
            cancel.headers.push(name.clone(), value);
        }
    }
    if let Ok(cseq) = invite.headers.cseq() {
        cancel
            .headers
            .push(HeaderName::CSeq, format!("{} CANCEL", cseq.seq));
    }
    for route in invite.headers.get_all(&HeaderName::Route) {
        cancel.headers.push(HeaderName::Route, route);
    }
    cancel
}

/// The ACK for a non-2xx final `response` to `invite`, per RFC 3261 §17.1.1.3: the INVITE's
/// Request-URI, top Via only (same branch: this ACK belongs to the INVITE transaction), From,
/// Call-ID, Max-Forwards and Route set; the response's To (with the tag it added); CSeq with the
/// INVITE's number and method ACK. No body.
///
/// It exists so that the INVITE client transaction (which ACKs every non-2xx final and
/// re-sends that ACK for each retransmitted final) and test user agents build the same request.
/// The ACK for a 2xx is a different request, built from the dialog (§13.2.2.4).
pub fn build_ack_for_non_2xx(invite: &Request, response: &Response) -> Request {
    let mut ack = Request::new(Method::Ack, invite.uri.clone());
    if let Some(via) = invite.headers.get(&HeaderName::Via) {
        ack.headers.push(HeaderName::Via, via);
    }
    if let Some(mf) = invite.headers.get(&HeaderName::MaxForwards) {
        ack.headers.push(HeaderName::MaxForwards, mf);
    }
    for (name, source) in [
        (HeaderName::From, &invite.headers),
        (HeaderName::To, &response.headers),
        (HeaderName::CallId, &invite.headers),
    ] {
        if let Some(value) = source.get(&name) {
            ack.headers.push(name.clone(), value);
        }
    }
    if let Ok(cseq) = invite.headers.cseq() {
        ack.headers
            .push(HeaderName::CSeq, format!("{} ACK", cseq.seq));
    }
    for route in invite.headers.get_all(&HeaderName::Route) {
        ack.headers.push(HeaderName::Route, route);
    }
    ack
}
