//! [`CallControl`] in a cluster: the intent operations over a [`SharedIntents`] table, and
//! how this node takes over the records of intents registered elsewhere.
//!
//! A pending intent's record lives with the shared intent, not on the node that took the
//! makecall: that node builds `intent.created` and lets the record go. Whichever node ends
//! the intent (claims, replaces, cancels or expires it) adopts the record into its registry,
//! its webhook `seq` going on from the shared one, and from there it is an ordinary record.

use std::sync::Arc;
use std::time::Instant;

use super::CallControl;
use crate::intent::{normalize_number, Intent, NoIntent};
use crate::registry::{CallEvent, CallExtras, CallRecord, EndCause, Party};
use crate::shared_intents::{SharedClaim, SharedError, SharedIntent, SharedIntents};

/// Expired intents taken from the shared table in one sweep step.
const EXPIRED_BATCH: usize = 500;

impl CallControl {
    /// Makes this node one of a cluster: intents go to `shared`, and `node` is this node's
    /// id. Once only; `false` if a table was set already.
    pub fn set_shared(&self, shared: Arc<dyn SharedIntents>, node: String) -> bool {
        self.shared.set((shared, node)).is_ok()
    }

    /// The cluster's intent table, when this node is one of several.
    pub fn shared(&self) -> Option<&Arc<dyn SharedIntents>> {
        self.shared.get().map(|(shared, _)| shared)
    }

    /// This node's id in the cluster (`None` for a single node).
    pub fn node_id(&self) -> Option<&str> {
        self.shared.get().map(|(_, node)| node.as_str())
    }

    fn shared_or_unavailable(&self) -> Result<&Arc<dyn SharedIntents>, SharedError> {
        self.shared()
            .ok_or_else(|| SharedError::Unavailable("no shared intent table".to_owned()))
    }

    /// makecall in a cluster: registers the intent in the shared table (latest wins), builds
    /// `intent.created`, and ends the replaced intent, wherever it was registered, as
    /// `intent_replaced`.
    pub async fn make_call_shared(
        &self,
        now: Instant,
        telnum: &str,
        caller: &str,
        callee: &str,
        extras: CallExtras,
    ) -> Result<Intent, SharedError> {
        let shared = self.shared_or_unavailable()?;
        let intent = SharedIntent {
            callid: crate::intent::new_callid(),
            telnum: normalize_number(telnum).to_owned(),
            caller: caller.to_owned(),
            callee: callee.to_owned(),
            data: extras.data.clone(),
            notify_url: extras.notify_url.clone(),
            created_at: self.registry.wall_at(now),
            seq: u32::from(
                self.registry
                    .builds_events_for(extras.notify_url.as_deref()),
            ),
            node: self.node_id().unwrap_or_default().to_owned(),
        };
        let ttl_ms = u64::try_from(self.intents.ttl().as_millis()).unwrap_or(u64::MAX);
        let replaced = shared
            .register(intent.clone(), ttl_ms, self.intents.max_pending())
            .await?;
        // The record exists here only long enough to build intent.created.
        self.registry.create_with(
            now,
            &intent.callid,
            &intent.telnum,
            &intent.caller,
            &intent.callee,
            extras,
        );
        self.registry.forget(&intent.callid);
        if let Some(old) = replaced {
            self.end_adopted(now, &old, Party::System, EndCause::IntentReplaced);
        }
        Ok(self.local_intent(now, &intent))
    }

    /// cancelcall in a cluster: withdraws the telnum's intent; its record ends as
    /// `intent_cancelled`.
    pub async fn cancel_call_shared(
        &self,
        now: Instant,
        telnum: &str,
    ) -> Result<Option<Intent>, SharedError> {
        let shared = self.shared_or_unavailable()?;
        let cancelled = shared.cancel(normalize_number(telnum).to_owned()).await?;
        Ok(cancelled.map(|old| {
            self.end_adopted(now, &old, Party::System, EndCause::IntentCancelled);
            self.local_intent(now, &old)
        }))
    }

    /// `POST /api/calls/{callid}/hangup` of a call still waiting for its phone, in a
    /// cluster: the intent is withdrawn wherever it was registered and its record ends
    /// `intent_cancelled`, by `api`. `None` when no pending intent has this callid.
    pub async fn cancel_intent_of_shared(
        &self,
        now: Instant,
        callid: &str,
    ) -> Result<Option<CallRecord>, SharedError> {
        let shared = self.shared_or_unavailable()?;
        let Some(old) = shared.cancel_callid(callid.to_owned()).await? else {
            return Ok(None);
        };
        self.end_adopted(now, &old, Party::Api, EndCause::IntentCancelled);
        Ok(self.registry.get(callid))
    }

    /// The CTI decision in a cluster (see [`claim_cti`](Self::claim_cti)): the outer error
    /// is the shared table's, the inner the decision.
    pub async fn claim_cti_shared(
        &self,
        now: Instant,
        from: &str,
        to: &str,
    ) -> Result<Result<Intent, NoIntent>, SharedError> {
        let shared = self.shared_or_unavailable()?;
        if self.requires_ownership() {
            if let Some(owner) = self.numbers.owner(to) {
                if owner != normalize_number(from) {
                    return Ok(Err(NoIntent::NotOwned));
                }
            } else if let Some(intent) = shared.get(normalize_number(from).to_owned()).await? {
                if !self.numbers.owns(from, &intent.caller) {
                    return Ok(Err(NoIntent::NotOwned));
                }
            }
        }
        let claim = shared
            .claim_cti(
                normalize_number(from).to_owned(),
                normalize_number(to).to_owned(),
            )
            .await?;
        Ok(self.claimed_shared(now, claim))
    }

    /// What a claim in the shared table found, recorded here: a claimed intent's record is
    /// adopted and moves to `trying`; an expired one ends `intent_expired`.
    pub fn claimed_shared(&self, now: Instant, claim: SharedClaim) -> Result<Intent, NoIntent> {
        match claim {
            SharedClaim::Claimed(intent) => {
                self.registry.adopt(&intent);
                self.registry
                    .update(now, &intent.callid, CallEvent::Invited);
                Ok(self.local_intent(now, &intent))
            }
            SharedClaim::Expired(intent) => {
                self.end_adopted(now, &intent, Party::System, EndCause::IntentExpired);
                Err(NoIntent::Expired)
            }
            SharedClaim::Refused(no) => Err(no),
        }
    }

    /// A claim this node won but gave up waiting for (the shared table answered after the
    /// INVITE had been refused or cancelled): the intent is gone, and its record ends with
    /// `cause`, by `by`.
    pub fn claim_abandoned(&self, now: Instant, claim: SharedClaim, by: Party, cause: EndCause) {
        match claim {
            SharedClaim::Claimed(intent) => {
                self.end_adopted(now, &intent, by, cause);
            }
            SharedClaim::Expired(intent) => {
                self.end_adopted(now, &intent, Party::System, EndCause::IntentExpired);
            }
            SharedClaim::Refused(_) => {}
        }
    }

    /// Expires the shared intents whose TTL has passed (each on exactly one node) and prunes
    /// old records here. Returns how many intents this node expired.
    pub async fn sweep_shared(&self, now: Instant) -> Result<usize, SharedError> {
        let shared = self.shared_or_unavailable()?;
        let mut expired = 0;
        loop {
            let batch = shared.take_expired(EXPIRED_BATCH).await?;
            for intent in &batch {
                self.end_adopted(now, intent, Party::System, EndCause::IntentExpired);
            }
            expired += batch.len();
            if batch.len() < EXPIRED_BATCH {
                break;
            }
        }
        self.registry.prune(now);
        Ok(expired)
    }

    /// Adopts the record of a shared intent and ends it.
    fn end_adopted(&self, now: Instant, intent: &SharedIntent, by: Party, cause: EndCause) {
        self.registry.adopt(intent);
        self.registry
            .update(now, &intent.callid, CallEvent::Ended { by, cause });
    }

    /// The engine's view of a shared intent. Its instants are this node's: `created` is
    /// now and `expires` a TTL later (the shared table keeps the real expiry; the engine
    /// reads neither).
    fn local_intent(&self, now: Instant, intent: &SharedIntent) -> Intent {
        Intent {
            callid: intent.callid.clone(),
            telnum: intent.telnum.clone(),
            caller: intent.caller.clone(),
            callee: intent.callee.clone(),
            created: now,
            expires: now + self.intents.ttl(),
        }
    }
}
