//! [`RedisIntents`]: the cluster's intent table in Redis, each operation one atomic Lua
//! script (`crates/cluster/scripts/`), so that a claim is exactly-once however many nodes
//! race for an intent.
//!
//! The scripts name some keys they compute (the intent a callid index points to), which a
//! single Redis (or one behind Sentinel) allows and Redis Cluster does not: one Redis serves
//! a callbridge cluster.

use std::sync::Arc;
use std::time::Duration;

use b2bua::intent::IntentTableFull;
use b2bua::shared_intents::{SharedClaim, SharedFuture, SharedIntent, SharedIntents};
use b2bua::NoIntent;
use redis::Script;

use crate::connection::Redis;
use crate::ClusterError;

/// Default prefix of every key callbridge writes.
pub const DEFAULT_PREFIX: &str = "callbridge:";

/// How long Redis keeps an intent past its TTL: the sweep (every second on every node) takes
/// it long before; the grace only bounds what a cluster with every node stopped leaves.
const GRACE: Duration = Duration::from_secs(600);

macro_rules! script {
    ($file:literal) => {
        Script::new(concat!(
            include_str!("../scripts/prelude.lua"),
            include_str!(concat!("../scripts/", $file))
        ))
    };
}

/// The scripts, hashed once (EVALSHA, loaded on first use by redis-rs).
struct Scripts {
    register: Script,
    claim: Script,
    cancel: Script,
    expire: Script,
}

/// The intent table shared by the nodes, in Redis.
pub struct RedisIntents {
    redis: Arc<Redis>,
    prefix: String,
    scripts: Scripts,
    /// The node that claims through this table, entered in the call index with each claim
    /// (`None`: claims are not indexed, as in tests of the table alone).
    node: Option<String>,
}

impl std::fmt::Debug for RedisIntents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisIntents")
            .field("redis", &self.redis)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisIntents {
    /// The table in `redis`, its keys under `prefix` ([`DEFAULT_PREFIX`]).
    pub fn new(redis: Arc<Redis>, prefix: &str) -> RedisIntents {
        RedisIntents {
            redis,
            prefix: prefix.to_owned(),
            scripts: Scripts {
                register: script!("register.lua"),
                claim: script!("claim.lua"),
                cancel: script!("cancel.lua"),
                expire: script!("expire.lua"),
            },
            node: None,
        }
    }

    /// Claims through this table enter the call index under `node` in the same atomic step.
    pub fn claiming_as(mut self, node: &str) -> RedisIntents {
        self.node = Some(node.to_owned());
        self
    }

    fn intent_key(&self, telnum: &str) -> String {
        format!("{}intent:{telnum}", self.prefix)
    }

    fn icid_prefix(&self) -> String {
        format!("{}icid:", self.prefix)
    }

    fn expiry_key(&self) -> String {
        format!("{}intent_expiry", self.prefix)
    }

    async fn register_intent(
        &self,
        intent: SharedIntent,
        ttl_ms: u64,
        max_pending: usize,
    ) -> Result<Option<SharedIntent>, ClusterError> {
        let mut invocation = self.scripts.register.prepare_invoke();
        invocation
            .key(self.intent_key(&intent.telnum))
            .key(format!("{}{}", self.icid_prefix(), intent.callid))
            .key(self.expiry_key())
            .arg(ttl_ms)
            .arg(u64::try_from(GRACE.as_millis()).unwrap_or(u64::MAX))
            .arg(max_pending)
            .arg(self.icid_prefix());
        for (name, value) in fields_of(&intent) {
            invocation.arg(name).arg(value);
        }
        let answer: Vec<String> = self
            .redis
            .run(|mut connection| async move { invocation.invoke_async(&mut connection).await })
            .await?;
        match answer.split_first() {
            Some((status, _)) if status == "full" => Err(ClusterError::Full(max_pending)),
            Some((status, rest)) if status == "ok" => match rest.split_first() {
                Some((old_state, fields)) if !old_state.is_empty() => {
                    Ok(Some(intent_from(fields)?))
                }
                _ => Ok(None),
            },
            _ => Err(unexpected("register", &answer)),
        }
    }

    async fn claim_intent(
        &self,
        telnum: String,
        to: String,
        cti: bool,
    ) -> Result<SharedClaim, ClusterError> {
        let mut invocation = self.scripts.claim.prepare_invoke();
        invocation
            .key(self.intent_key(&telnum))
            .key(self.expiry_key())
            .arg(self.icid_prefix())
            .arg(to)
            .arg(if cti { "1" } else { "0" })
            .arg(self.node.as_deref().unwrap_or(""))
            .arg(crate::index::call_key_prefix(&self.prefix))
            .arg(crate::index::node_calls_key_prefix(&self.prefix))
            .arg(u64::try_from(crate::index::LIVE_TTL.as_millis()).unwrap_or(u64::MAX));
        let answer: Vec<String> = self
            .redis
            .run(|mut connection| async move { invocation.invoke_async(&mut connection).await })
            .await?;
        match answer.split_first() {
            Some((status, _)) if status == "none" => Ok(SharedClaim::Refused(NoIntent::None)),
            Some((status, _)) if status == "other" => {
                Ok(SharedClaim::Refused(NoIntent::OtherNumber))
            }
            Some((status, fields)) if status == "expired" => {
                Ok(SharedClaim::Expired(intent_from(fields)?))
            }
            Some((status, fields)) if status == "claimed" => {
                Ok(SharedClaim::Claimed(intent_from(fields)?))
            }
            _ => Err(unexpected("claim", &answer)),
        }
    }

    async fn cancel_at(
        &self,
        key: String,
        callid: &str,
    ) -> Result<Option<SharedIntent>, ClusterError> {
        let mut invocation = self.scripts.cancel.prepare_invoke();
        invocation
            .key(key)
            .key(self.expiry_key())
            .arg(self.icid_prefix())
            .arg(callid);
        let answer: Vec<String> = self
            .redis
            .run(|mut connection| async move { invocation.invoke_async(&mut connection).await })
            .await?;
        match answer.split_first() {
            Some((status, _)) if status == "none" => Ok(None),
            Some((status, fields)) if status == "cancelled" => Ok(Some(intent_from(fields)?)),
            _ => Err(unexpected("cancel", &answer)),
        }
    }

    async fn cancel_by_callid(&self, callid: String) -> Result<Option<SharedIntent>, ClusterError> {
        let icid = format!("{}{callid}", self.icid_prefix());
        let key: Option<String> = self.redis.query(redis::cmd("GET").arg(icid)).await?;
        match key {
            // The script checks that the hash still holds this callid: a makecall that
            // replaced it in between is not cancelled by mistake.
            Some(key) => self.cancel_at(key, &callid).await,
            None => Ok(None),
        }
    }

    /// The pending intent `callid`, if it still is (a record's lookup by any node's API).
    pub async fn find_callid(&self, callid: &str) -> Result<Option<SharedIntent>, ClusterError> {
        let icid = format!("{}{callid}", self.icid_prefix());
        let key: Option<String> = self.redis.query(redis::cmd("GET").arg(icid)).await?;
        let Some(key) = key else {
            return Ok(None);
        };
        let fields: Vec<String> = self.redis.query(redis::cmd("HGETALL").arg(key)).await?;
        if fields.is_empty() {
            return Ok(None);
        }
        let intent = intent_from(&fields)?;
        Ok((intent.callid == callid).then_some(intent))
    }

    async fn get_intent(&self, telnum: String) -> Result<Option<SharedIntent>, ClusterError> {
        let key = self.intent_key(&telnum);
        let fields: Vec<String> = self.redis.query(redis::cmd("HGETALL").arg(key)).await?;
        if fields.is_empty() {
            return Ok(None);
        }
        intent_from(&fields).map(Some)
    }

    async fn take_expired_intents(&self, max: usize) -> Result<Vec<SharedIntent>, ClusterError> {
        let mut invocation = self.scripts.expire.prepare_invoke();
        invocation
            .key(self.expiry_key())
            .arg(self.icid_prefix())
            .arg(max);
        let answer: Vec<Vec<String>> = self
            .redis
            .run(|mut connection| async move { invocation.invoke_async(&mut connection).await })
            .await?;
        answer.iter().map(|fields| intent_from(fields)).collect()
    }

    async fn pending_count(&self) -> Result<u64, ClusterError> {
        let key = self.expiry_key();
        self.redis.query(redis::cmd("ZCARD").arg(key)).await
    }
}

impl SharedIntents for RedisIntents {
    fn register(
        &self,
        intent: SharedIntent,
        ttl_ms: u64,
        max_pending: usize,
    ) -> SharedFuture<'_, Option<SharedIntent>> {
        Box::pin(async move {
            self.register_intent(intent, ttl_ms, max_pending)
                .await
                .map_err(|error| match error {
                    ClusterError::Full(max) => IntentTableFull { max }.into(),
                    other => other.into(),
                })
        })
    }

    fn cancel(&self, telnum: String) -> SharedFuture<'_, Option<SharedIntent>> {
        Box::pin(async move {
            let key = self.intent_key(&telnum);
            Ok(self.cancel_at(key, "").await?)
        })
    }

    fn cancel_callid(&self, callid: String) -> SharedFuture<'_, Option<SharedIntent>> {
        Box::pin(async move { Ok(self.cancel_by_callid(callid).await?) })
    }

    fn claim(&self, calling: String, dialled: String) -> SharedFuture<'_, SharedClaim> {
        Box::pin(async move { Ok(self.claim_intent(calling, dialled, false).await?) })
    }

    fn claim_cti(&self, from: String, to: String) -> SharedFuture<'_, SharedClaim> {
        Box::pin(async move { Ok(self.claim_intent(from, to, true).await?) })
    }

    fn get(&self, telnum: String) -> SharedFuture<'_, Option<SharedIntent>> {
        Box::pin(async move { Ok(self.get_intent(telnum).await?) })
    }

    fn take_expired(&self, max: usize) -> SharedFuture<'_, Vec<SharedIntent>> {
        Box::pin(async move { Ok(self.take_expired_intents(max).await?) })
    }

    fn pending(&self) -> SharedFuture<'_, u64> {
        Box::pin(async move { Ok(self.pending_count().await?) })
    }
}

/// The hash fields of an intent ('callid' first: the register script reads it there).
fn fields_of(intent: &SharedIntent) -> Vec<(&'static str, String)> {
    let mut fields = vec![
        ("callid", intent.callid.clone()),
        ("telnum", intent.telnum.clone()),
        ("caller", intent.caller.clone()),
        ("callee", intent.callee.clone()),
        ("created_at", intent.created_at.to_string()),
        ("seq", intent.seq.to_string()),
        ("node", intent.node.clone()),
    ];
    if let Some(data) = &intent.data {
        fields.push(("data", data.clone()));
    }
    if let Some(url) = &intent.notify_url {
        fields.push(("notify_url", url.clone()));
    }
    fields
}

/// An intent from its hash fields (name, value, name, value, ...).
fn intent_from(fields: &[String]) -> Result<SharedIntent, ClusterError> {
    let mut intent = SharedIntent::default();
    let mut pairs = fields.chunks_exact(2);
    for pair in pairs.by_ref() {
        let (Some(name), Some(value)) = (pair.first(), pair.get(1)) else {
            continue;
        };
        let value = value.clone();
        match name.as_str() {
            "callid" => intent.callid = value,
            "telnum" => intent.telnum = value,
            "caller" => intent.caller = value,
            "callee" => intent.callee = value,
            "data" => intent.data = Some(value),
            "notify_url" => intent.notify_url = Some(value),
            "created_at" => intent.created_at = value.parse().unwrap_or(0),
            "seq" => intent.seq = value.parse().unwrap_or(0),
            "node" => intent.node = value,
            _ => {}
        }
    }
    if !pairs.remainder().is_empty() || intent.callid.is_empty() {
        return Err(unexpected("intent", fields));
    }
    Ok(intent)
}

fn unexpected(what: &str, answer: &[String]) -> ClusterError {
    let mut shown = answer.join(" ");
    shown.truncate(200);
    ClusterError::Unexpected(format!("{what}: {shown}"))
}
