//! Redis beat state, for several machines sharing one Redis.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;

use super::{from_millis, to_millis, BeatStore, Claim};
use crate::beat::BeatError;

/// The claim, atomic because Redis runs a script without interleaving.
/// KEYS[1] = hash entry → last slot (ms), KEYS[2] = hash entry → owner.
/// ARGV = entry, slot, owner. Returns 1 if won, 0 if lost.
const CLAIM_SCRIPT: &str = r"
local last = redis.call('HGET', KEYS[1], ARGV[1])
local slot = tonumber(ARGV[2])
if last then
  last = tonumber(last)
  if last > slot then return 0 end
  if last == slot then
    if redis.call('HGET', KEYS[2], ARGV[1]) == ARGV[3] then return 1 end
    return 0
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
return 1
";

/// Beat state in two Redis hashes, `{prefix}last_run` (entry → last slot in
/// Unix ms) and `{prefix}owner` (entry → the beat that claimed it). The hashes
/// have no expiry: they are the persisted last run of each entry.
///
/// The claim is a Lua script rather than `SET key NX` per slot because it must
/// compare slots ("only later than the last one"), which makes a late or
/// restarted beat unable to fire an old slot again, and needs no key per slot.
#[derive(Clone)]
pub struct RedisBeatStore {
    conn: ConnectionManager,
    prefix: String,
    script: Script,
}

impl fmt::Debug for RedisBeatStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBeatStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisBeatStore {
    /// The key prefix the application uses unless configured otherwise.
    pub const DEFAULT_PREFIX: &'static str = "openthreat:beat:";

    /// Uses an existing connection manager; keys start with `prefix`.
    pub fn new(conn: ConnectionManager, prefix: impl Into<String>) -> Self {
        RedisBeatStore {
            conn,
            prefix: prefix.into(),
            script: Script::new(CLAIM_SCRIPT),
        }
    }

    /// Connects to `url` lazily: the beat can start while Redis is down and
    /// reports the outage through its retries. Calls fail after 5 s instead of
    /// hanging, so the beat's own back-off (which logs) stays in charge.
    pub fn connect(url: &str, prefix: impl Into<String>) -> Result<Self, BeatError> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(1);
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Self::new(conn, prefix))
    }

    fn last_run_key(&self) -> String {
        format!("{}last_run", self.prefix)
    }

    fn owner_key(&self) -> String {
        format!("{}owner", self.prefix)
    }
}

#[async_trait]
impl BeatStore for RedisBeatStore {
    async fn claim(
        &self,
        entry: &str,
        slot: DateTime<Utc>,
        owner: &str,
    ) -> Result<Claim, BeatError> {
        let mut conn = self.conn.clone();
        let won: i64 = self
            .script
            .key(self.last_run_key())
            .key(self.owner_key())
            .arg(entry)
            .arg(to_millis(slot))
            .arg(owner)
            .invoke_async(&mut conn)
            .await?;
        Ok(if won == 1 { Claim::Won } else { Claim::Lost })
    }

    async fn last_run(&self, entry: &str) -> Result<Option<DateTime<Utc>>, BeatError> {
        let mut conn = self.conn.clone();
        let ms: Option<i64> = redis::cmd("HGET")
            .arg(self.last_run_key())
            .arg(entry)
            .query_async(&mut conn)
            .await?;
        ms.map(from_millis).transpose()
    }
}
