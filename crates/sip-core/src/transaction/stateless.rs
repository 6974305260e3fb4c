//! Answers without a transaction (RFC 3261 §8.2.7, the stateless UAS), for what the user must
//! not keep state for: requests from untrusted sources and INVITEs shed under overload. The
//! response goes out once, is never retransmitted, and a copy of the request simply gets
//! another copy of the same answer.

use crate::message::{Request, Response};
use crate::peer::{response_destination, Peer};

use super::key::ServerKey;
use super::{TransactionLayer, TxError};

impl TransactionLayer {
    /// Whether `request` belongs to a server transaction that exists (a retransmission, or
    /// the ACK of one): such a request must reach the layer, which absorbs or routes it,
    /// rather than be answered statelessly.
    pub fn has_server_transaction(&self, request: &Request) -> bool {
        ServerKey::for_request(request).is_ok_and(|(key, _)| self.server_keys.contains_key(&key))
    }

    /// Sends `response` to the request that came from `request_source`, where RFC 3261
    /// §18.2.2 says (its top Via with `received`/`rport`), and forgets it.
    pub fn send_stateless_response(
        &mut self,
        response: &Response,
        request_source: Peer,
    ) -> Result<(), TxError> {
        let via = response
            .headers
            .top_via()
            .map_err(|_| TxError::Unmatchable("response without usable Via"))?;
        let to = response_destination(&via, request_source);
        self.out.stats.stateless_responses += 1;
        self.out.transmit(to, response.to_bytes(), None);
        Ok(())
    }
}
