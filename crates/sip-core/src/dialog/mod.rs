//! The RFC 3261 §12 dialog layer, sans-IO.
//!
//! A [`Dialog`] is the state two user agents share after an INVITE (or another
//! dialog-creating request) got a 101-299 response carrying a To tag: the identifier
//! ([`DialogId`]), the CSeq spaces of both sides, the peer's target URI and the route set.
//! This module builds dialogs from the creating request/response pair
//! ([`Dialog::new_uac`], [`Dialog::new_uas`]), keeps them up to date from the messages
//! exchanged inside them ([`Dialog::on_request`], [`Dialog::on_response`],
//! [`Dialog::on_response_sent`]), and builds the requests we send inside them
//! ([`Dialog::create_request`], [`Dialog::create_ack`]).
//!
//! Nothing here does I/O, starts timers or adds a Via: the transaction layer adds the Via
//! (with a fresh branch), and the caller picks the peer to send to. [`Dialog::next_hop`] is
//! RFC 3261 §12.2.1.1's answer (the first route, or the remote target); callbridge's engine
//! does not use it, since each of its legs has exactly one peer (the trunk, or the source of
//! leg A's INVITE) and every in-dialog request of that leg goes there.

mod id;
#[cfg(test)]
mod tests;

pub use id::DialogId;

use rand::Rng;

use crate::message::{HeaderName, Method, NameAddr, ParseError, Request, Response, Scheme, Uri};

/// Max-Forwards put on requests built here (RFC 3261 §8.1.1.6).
pub const MAX_FORWARDS: u32 = 70;

/// Where a dialog is in its life (RFC 3261 §12): `Early` after a dialog-creating 1xx,
/// `Confirmed` after a 2xx, `Terminated` after BYE, a 481/408 to an in-dialog request, or a
/// non-2xx final response to the request that created an early dialog.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DialogState {
    Early,
    Confirmed,
    Terminated,
}

/// Why a message cannot create or be applied to a dialog. The call layer turns the errors
/// raised for incoming requests into responses with [`DialogError::status_code`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DialogError {
    /// A header (or a tag inside one) the dialog needs is absent.
    #[error("missing {0}")]
    MissingHeader(&'static str),
    /// A header the dialog needs does not parse, or the messages do not belong together.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The response cannot create a dialog: its status is not 101-299, or it is a 1xx
    /// without a To tag.
    #[error("response {status} does not create a dialog")]
    NotDialogCreating { status: u16 },
    /// An in-dialog request from the peer carries a CSeq at or below the highest one seen
    /// (RFC 3261 §12.2.2). The caller answers it with 500.
    #[error("CSeq {got} out of order (expected above {expected_above})")]
    CSeqOutOfOrder { got: u32, expected_above: u32 },
    /// The message carries a Call-ID or tags of another dialog.
    #[error("message does not belong to dialog {0}")]
    NotInDialog(Box<DialogId>),
}

impl DialogError {
    /// The status to answer an incoming request with when this error was raised for it:
    /// 500 for an out-of-order CSeq (RFC 3261 §12.2.2), 481 for a request of another
    /// dialog, 400 for missing or malformed headers, 500 otherwise.
    pub fn status_code(&self) -> u16 {
        match self {
            DialogError::MissingHeader(_) | DialogError::Malformed(_) => 400,
            DialogError::NotInDialog(_) => 481,
            DialogError::CSeqOutOfOrder { .. } | DialogError::NotDialogCreating { .. } => 500,
        }
    }
}

impl From<ParseError> for DialogError {
    fn from(error: ParseError) -> Self {
        match error {
            ParseError::MissingHeader(name) => DialogError::MissingHeader(name),
            other => DialogError::Malformed(other.to_string()),
        }
    }
}

/// One dialog as seen by one of its two user agents (RFC 3261 §12).
///
/// It exists so that in-dialog requests get the right Request-URI, Route set, tags and CSeq,
/// and so that in-dialog requests from the peer are checked for order and refresh the
/// remote target. Fields are private: they change only by the RFC's rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dialog {
    id: DialogId,
    state: DialogState,
    local_seq: u32,
    remote_seq: Option<u32>,
    /// Our address (From of requests we send), with the local tag.
    local_uri: NameAddr,
    /// The peer's address (To of requests we send), with the remote tag when it has one.
    remote_uri: NameAddr,
    remote_target: Uri,
    route_set: Vec<NameAddr>,
    local_contact: NameAddr,
    secure: bool,
    /// True when we sent the dialog-creating request.
    uac: bool,
    /// CSeq of the dialog-creating request (in our CSeq space as UAC, the peer's as UAS).
    creating_cseq: u32,
    creating_method: Method,
}

impl Dialog {
    /// The dialog we hold as UAC after `response` to our `request` (RFC 3261 §12.1.2).
    ///
    /// A 101-199 with a To tag gives an `Early` dialog, a 2xx a `Confirmed` one (a 2xx
    /// without To tag gets the null remote tag). The route set is the response's
    /// Record-Route in reverse order, the remote target its Contact; a 1xx without Contact
    /// (which some devices send) falls back to the request's Request-URI until the 2xx
    /// brings one. `local_seq` is the request's CSeq, `local_contact` its Contact.
    pub fn new_uac(request: &Request, response: &Response) -> Result<Dialog, DialogError> {
        let to = response.headers.to()?;
        match response.status {
            101..=199 if to.tag().is_some() => {}
            200..=299 => {}
            status => return Err(DialogError::NotDialogCreating { status }),
        }
        let state = if response.status < 200 {
            DialogState::Early
        } else {
            DialogState::Confirmed
        };
        let call_id = call_id(request)?;
        if response.headers.call_id() != Some(call_id) {
            return Err(DialogError::Malformed(
                "response Call-ID differs from the request's".into(),
            ));
        }
        let cseq = request.headers.cseq()?;
        let response_cseq = response.headers.cseq()?;
        if response_cseq != cseq {
            return Err(DialogError::Malformed(format!(
                "response CSeq {response_cseq} does not answer request CSeq {cseq}"
            )));
        }
        let local_uri = request.headers.from()?;
        let local_tag = local_uri
            .tag()
            .ok_or(DialogError::MissingHeader("From tag"))?
            .to_owned();
        let remote_tag = to.tag().unwrap_or_default().to_owned();
        let remote_target = match first_contact(response)? {
            Some(contact) => contact.uri,
            None if state == DialogState::Early => request.uri.clone(),
            None => return Err(DialogError::MissingHeader("Contact")),
        };
        let local_contact =
            first_contact_of(&request.headers)?.ok_or(DialogError::MissingHeader("Contact"))?;
        let mut route_set = response.headers.record_routes()?;
        route_set.reverse();
        Ok(Dialog {
            id: DialogId::new(call_id, local_tag, remote_tag),
            state,
            local_seq: cseq.seq,
            remote_seq: None,
            local_uri,
            remote_uri: to,
            remote_target,
            route_set,
            local_contact,
            secure: matches!(request.uri.scheme(), Scheme::Sips),
            uac: true,
            creating_cseq: cseq.seq,
            creating_method: cseq.method,
        })
    }

    /// The dialog we hold as UAS when we answer `request` with `response`
    /// (RFC 3261 §12.1.1).
    ///
    /// `response` is what we send: it must carry our To tag and a Contact; a 1xx makes the
    /// dialog `Early`, a 2xx `Confirmed`. The route set is the request's Record-Route in
    /// order, the remote target its Contact, `remote_seq` its CSeq. RFC 3261 leaves our
    /// local sequence number empty until we send a request; it starts here at a random
    /// value in `1..2^30`, which leaves 2^30 requests of room below the 2^31 limit of
    /// §8.1.1.5 and does not reveal how many dialogs we created.
    pub fn new_uas(request: &Request, response: &Response) -> Result<Dialog, DialogError> {
        if !(101..=299).contains(&response.status) {
            return Err(DialogError::NotDialogCreating {
                status: response.status,
            });
        }
        let state = if response.status < 200 {
            DialogState::Early
        } else {
            DialogState::Confirmed
        };
        let call_id = call_id(request)?;
        let cseq = request.headers.cseq()?;
        let local_uri = response.headers.to()?;
        let local_tag = local_uri
            .tag()
            .ok_or(DialogError::MissingHeader("To tag"))?
            .to_owned();
        let remote_uri = request.headers.from()?;
        let remote_tag = remote_uri.tag().unwrap_or_default().to_owned();
        let remote_target = first_contact_of(&request.headers)?
            .ok_or(DialogError::MissingHeader("Contact"))?
            .uri;
        let local_contact =
            first_contact(response)?.ok_or(DialogError::MissingHeader("Contact"))?;
        let route_set = request.headers.record_routes()?;
        Ok(Dialog {
            id: DialogId::new(call_id, local_tag, remote_tag),
            state,
            local_seq: rand::thread_rng().gen_range(1..(1u32 << 30)),
            remote_seq: Some(cseq.seq),
            local_uri,
            remote_uri,
            remote_target,
            route_set,
            local_contact,
            secure: matches!(request.uri.scheme(), Scheme::Sips),
            uac: false,
            creating_cseq: cseq.seq,
            creating_method: cseq.method,
        })
    }

    pub fn id(&self) -> &DialogId {
        &self.id
    }

    pub fn state(&self) -> DialogState {
        self.state
    }

    /// The CSeq number of the last request we built in this dialog.
    pub fn local_seq(&self) -> u32 {
        self.local_seq
    }

    /// The highest CSeq number seen from the peer; `None` before its first request.
    pub fn remote_seq(&self) -> Option<u32> {
        self.remote_seq
    }

    /// Our From (with the local tag).
    pub fn local_uri(&self) -> &NameAddr {
        &self.local_uri
    }

    /// The peer's address, our To (with the remote tag unless it is null).
    pub fn remote_uri(&self) -> &NameAddr {
        &self.remote_uri
    }

    /// The peer's Contact URI: the Request-URI of our in-dialog requests.
    pub fn remote_target(&self) -> &Uri {
        &self.remote_target
    }

    /// The route set, in the order the Route headers are written.
    pub fn route_set(&self) -> &[NameAddr] {
        &self.route_set
    }

    /// The Contact we put on target-refresh requests.
    pub fn local_contact(&self) -> &NameAddr {
        &self.local_contact
    }

    /// True when the dialog-creating request had a `sips:` Request-URI (RFC 3261 §12.1).
    pub fn is_secure(&self) -> bool {
        self.secure
    }

    /// True when we sent the dialog-creating request.
    pub fn is_uac(&self) -> bool {
        self.uac
    }

    /// Replaces the Contact used on later target-refresh requests (for example after our
    /// address changed).
    pub fn set_local_contact(&mut self, contact: NameAddr) {
        self.local_contact = contact;
    }

    /// Ends the dialog, for causes this layer does not see (2xx never ACKed, BYE sent, ...).
    pub fn terminate(&mut self) {
        self.state = DialogState::Terminated;
    }

    /// Applies a response the peer sent to a request we sent inside this dialog
    /// (RFC 3261 §12.2.1.2, §13.2.2.4).
    ///
    /// - A 2xx to the dialog-creating request confirms an early dialog; as UAC the route
    ///   set is then recomputed from the 2xx's Record-Route.
    /// - A 1xx/2xx to INVITE or a 2xx to UPDATE/SUBSCRIBE/NOTIFY with a Contact refreshes
    ///   the remote target.
    /// - A 481 or 408 terminates the dialog; any final response to BYE does too.
    /// - A non-2xx final response to the request that created an early dialog terminates
    ///   it whatever its To tag (RFC 3261 §12.3: all early dialogs of that request end),
    ///   so the caller may hand it to every early dialog of the Call-ID.
    ///
    /// Errors: `NotInDialog` when Call-ID, From tag or To tag belong to another dialog
    /// (a 2xx with another To tag is a forked dialog: create it with [`Dialog::new_uac`]);
    /// `Malformed`/`MissingHeader` for unreadable headers. The dialog is unchanged on error.
    pub fn on_response(&mut self, response: &Response) -> Result<(), DialogError> {
        let cseq = response.headers.cseq()?;
        let from = response.headers.from()?;
        let to = response.headers.to()?;
        if response.headers.call_id() != Some(self.id.call_id.as_str())
            || from.tag() != Some(self.id.local_tag.as_str())
        {
            return Err(self.not_in_dialog());
        }
        let to_creating_request =
            self.uac && cseq.seq == self.creating_cseq && cseq.method == self.creating_method;
        if self.state == DialogState::Early && to_creating_request && response.status >= 300 {
            self.state = DialogState::Terminated;
            return Ok(());
        }
        if to.tag().unwrap_or_default() != self.id.remote_tag {
            return Err(self.not_in_dialog());
        }
        if matches!(response.status, 408 | 481) {
            self.state = DialogState::Terminated;
            return Ok(());
        }
        if cseq.method == Method::Bye && response.status >= 200 {
            self.state = DialogState::Terminated;
            return Ok(());
        }
        let refreshes = match response.class() {
            1 => cseq.method == Method::Invite && response.status > 100,
            2 => is_target_refresh(&cseq.method),
            _ => false,
        };
        let new_target = if refreshes {
            first_contact(response)?.map(|contact| contact.uri)
        } else {
            None
        };
        let confirms =
            response.class() == 2 && self.state == DialogState::Early && to_creating_request;
        let new_routes = if confirms {
            let mut routes = response.headers.record_routes()?;
            routes.reverse();
            Some(routes)
        } else {
            None
        };
        if let Some(target) = new_target {
            self.remote_target = target;
        }
        if let Some(routes) = new_routes {
            self.route_set = routes;
        }
        if confirms {
            self.state = DialogState::Confirmed;
        }
        Ok(())
    }

    /// Applies a response we send to the peer's request in this dialog: as UAS, a 2xx to
    /// the dialog-creating request confirms the early dialog and a non-2xx final response
    /// to it terminates the dialog. Other responses change nothing.
    pub fn on_response_sent(&mut self, response: &Response) -> Result<(), DialogError> {
        let cseq = response.headers.cseq()?;
        let to_creating_request =
            !self.uac && cseq.seq == self.creating_cseq && cseq.method == self.creating_method;
        if self.state == DialogState::Early && to_creating_request {
            match response.class() {
                2 => self.state = DialogState::Confirmed,
                3..=6 => self.state = DialogState::Terminated,
                _ => {}
            }
        }
        Ok(())
    }

    /// Applies an in-dialog request from the peer (RFC 3261 §12.2.2).
    ///
    /// A CSeq lower than the highest seen, or equal to it, is refused with
    /// [`DialogError::CSeqOutOfOrder`] — the caller answers that with 500
    /// ([`DialogError::status_code`]). ACK and CANCEL are exempt: they carry the CSeq number
    /// of the request they acknowledge or cancel and never move `remote_seq`. Otherwise
    /// `remote_seq` becomes the request's CSeq; a target-refresh request (INVITE, UPDATE,
    /// SUBSCRIBE, NOTIFY) with a Contact replaces the remote target; BYE terminates the
    /// dialog. The dialog is unchanged on error.
    pub fn on_request(&mut self, request: &Request) -> Result<(), DialogError> {
        if DialogId::for_incoming_request(request).as_ref() != Some(&self.id) {
            return Err(self.not_in_dialog());
        }
        let cseq = request.headers.cseq()?;
        if matches!(request.method, Method::Ack | Method::Cancel) {
            return Ok(());
        }
        if let Some(seen) = self.remote_seq {
            if cseq.seq <= seen {
                return Err(DialogError::CSeqOutOfOrder {
                    got: cseq.seq,
                    expected_above: seen,
                });
            }
        }
        let new_target = if is_target_refresh(&request.method) {
            first_contact_of(&request.headers)?.map(|contact| contact.uri)
        } else {
            None
        };
        self.remote_seq = Some(cseq.seq);
        if let Some(target) = new_target {
            self.remote_target = target;
        }
        if request.method == Method::Bye {
            self.state = DialogState::Terminated;
        }
        Ok(())
    }

    /// Builds the next request we send in this dialog (RFC 3261 §12.2.1.1): the local CSeq
    /// number is incremented first; Request-URI and Route follow the route set (loose or
    /// strict routing); From, To, Call-ID, CSeq and Max-Forwards are set, and Contact for
    /// INVITE, UPDATE, SUBSCRIBE, NOTIFY and REFER. No Via: the transaction layer adds it.
    ///
    /// ACK and CANCEL do not take a new CSeq number: `Method::Ack` gives
    /// [`Dialog::create_ack`] for the current local CSeq, and `Method::Cancel` a request with
    /// the current local CSeq — but a CANCEL must copy the INVITE's Via and Route (§9.1), so
    /// the transaction layer should build it from the INVITE instead.
    pub fn create_request(&mut self, method: Method) -> Request {
        match method {
            Method::Ack => return self.create_ack(self.local_seq),
            Method::Cancel => {}
            _ => self.local_seq = self.local_seq.saturating_add(1),
        }
        let with_contact = is_target_refresh(&method) || method == Method::Refer;
        let seq = self.local_seq;
        let mut request = self.build(method, seq);
        if with_contact {
            request
                .headers
                .push(HeaderName::Contact, self.local_contact.to_string());
        }
        request
    }

    /// Builds the ACK for a 2xx to the INVITE sent with CSeq number `invite_cseq`
    /// (RFC 3261 §13.2.2.4): same CSeq number, method ACK, routed like any in-dialog
    /// request. No Via: the caller adds one with a new branch (the ACK for a 2xx is a
    /// transaction of its own).
    pub fn create_ack(&self, invite_cseq: u32) -> Request {
        self.build(Method::Ack, invite_cseq)
    }

    /// The URI whose address the request is sent to (RFC 3261 §12.2.1.1, §8.1.2): the first
    /// route when there is a route set, the remote target otherwise. The caller resolves it.
    pub fn next_hop(&self) -> &Uri {
        self.route_set
            .first()
            .map_or(&self.remote_target, |route| &route.uri)
    }

    /// Request-URI and Route rows per RFC 3261 §12.2.1.1.
    fn build(&self, method: Method, seq: u32) -> Request {
        let (uri, routes): (Uri, Vec<String>) = match self.route_set.split_first() {
            Some((first, rest)) if !first.uri.params().contains("lr") => {
                // Strict router: it gets the Request-URI; the remote target travels as the
                // last Route entry.
                let mut routes: Vec<String> = rest.iter().map(ToString::to_string).collect();
                routes.push(format!("<{}>", self.remote_target));
                (first.uri.clone(), routes)
            }
            _ => (
                self.remote_target.clone(),
                self.route_set.iter().map(ToString::to_string).collect(),
            ),
        };
        let cseq = format!("{seq} {method}");
        let mut request = Request::new(method, uri);
        let headers = &mut request.headers;
        for route in routes {
            headers.push(HeaderName::Route, route);
        }
        headers.push(HeaderName::MaxForwards, MAX_FORWARDS.to_string());
        headers.push(HeaderName::From, self.local_uri.to_string());
        headers.push(HeaderName::To, self.remote_uri.to_string());
        headers.push(HeaderName::CallId, self.id.call_id.clone());
        headers.push(HeaderName::CSeq, cseq);
        request
    }

    fn not_in_dialog(&self) -> DialogError {
        DialogError::NotInDialog(Box::new(self.id.clone()))
    }
}

/// Methods whose requests replace the remote target (RFC 3261 §12.2, RFC 3311, RFC 6665).
fn is_target_refresh(method: &Method) -> bool {
    matches!(
        method,
        Method::Invite | Method::Update | Method::Subscribe | Method::Notify
    )
}

fn call_id(request: &Request) -> Result<&str, DialogError> {
    request
        .headers
        .call_id()
        .filter(|id| !id.is_empty())
        .ok_or(DialogError::MissingHeader("Call-ID"))
}

fn first_contact(response: &Response) -> Result<Option<NameAddr>, DialogError> {
    first_contact_of(&response.headers)
}

fn first_contact_of(headers: &crate::message::Headers) -> Result<Option<NameAddr>, DialogError> {
    match headers.get(&HeaderName::Contact) {
        Some(value) => Ok(Some(NameAddr::parse(value)?)),
        None => Ok(None),
    }
}
