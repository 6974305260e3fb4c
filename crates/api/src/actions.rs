//! [`CallActions`]: how the API asks the SIP side to act on a live call. The call engine
//! belongs to the SIP task alone, so the API never touches it: it sends a request and awaits
//! the engine's answer, as it reads the SIP side's status through [`crate::SipStatus`].

use b2bua::engine::ApiHangup;
use tokio::sync::oneshot;

/// The SIP side's actions on calls, for `POST /api/calls/{callid}/hangup`. The binary
/// implements it over a bounded queue into the SIP task; [`crate::NoSip`] answers nothing
/// (the API then says 503 `sip_unavailable`).
pub trait CallActions: Send + Sync {
    /// Ends call `callid` on both legs. The receiver resolves to what the engine did; it is
    /// closed without a value when the SIP side is absent, stopping, or too busy to take the
    /// request.
    fn hang_up(&self, callid: String) -> oneshot::Receiver<ApiHangup>;
}

impl CallActions for crate::NoSip {
    fn hang_up(&self, _callid: String) -> oneshot::Receiver<ApiHangup> {
        // The sender is dropped at once: "no SIP side".
        oneshot::channel().1
    }
}
