//! Redis broker in kombu's layout, so Python Celery and our workers share queues.
//!
//! # Keys (all behind the optional `global_keyprefix`, as kombu does it)
//!
//! * `<queue>`, `<queue>\x06\x163`, `<queue>\x06\x166`, `<queue>\x06\x169`: one
//!   list per priority step; producers `LPUSH`, consumers `BRPOP` them in that
//!   order with a 1 s timeout, so priority 0 is consumed first.
//! * `unacked` (hash tag → `[payload, exchange, routing_key]`) and
//!   `unacked_index` (zset tag → delivery time): kombu's ack emulation. A
//!   delivery is written to both; an ack removes it from both.
//! * `unacked_mutex`: the lock under which entries older than the visibility
//!   timeout are pushed back to their queue. Python workers and ours take the
//!   same lock and restore each other's lost messages.
//! * `_kombu.binding.<exchange>`: members `routing_key\x06\x16pattern\x06\x16queue`,
//!   read to find the queue of a restored message with a named exchange.
//! * `openthreat.scheduled` (zset due-time → `[list key, payload]`) and
//!   `openthreat.dead_letter` (list): ours; Python ignores them.
//!
//! # Fetching
//!
//! Messages already waiting are leased in batches by one Lua script that pops
//! them in priority order and writes their `unacked` entries in the same
//! atomic step. Only when nothing is waiting does the worker block in `BRPOP`
//! (on its own connection, 1 s timeout, like kombu) and then record the one
//! message it got, as kombu does.
//!
//! # ETA tasks and the visibility timeout (kombu#337)
//!
//! Celery keeps an ETA task unacked in the worker's memory until it is due.
//! When the ETA lies beyond the visibility timeout another worker restores the
//! message meanwhile and the task runs twice. Ours never holds an ETA message
//! under a lease: a message whose ETA is more than a second away is moved,
//! in one `MULTI`, from `unacked` into `openthreat.scheduled` (scored by its
//! ETA), which no restore looks at. The worker's housekeeping moves due
//! entries back to the head of their queue with one Lua script, atomically,
//! so exactly one copy exists at every moment. Leases of messages being run
//! are also refreshed (`ZADD XX`) while they run, so a task longer than the
//! visibility timeout is not restored under a live worker either.
//!
//! The price: a deferred message waits in a key only our workers read, so
//! while no worker of ours runs, it is not released (Python workers keep
//! handling the ETA messages they receive themselves, the Celery way).

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client, Script};
use serde_json::Value;
use tokio::sync::Mutex;

use super::{Broker, DeadLetter, Delivery, DEFAULT_VISIBILITY_TIMEOUT};
use crate::error::{Error, Result};
use crate::message::{peek, Message};

const SEP: &str = "\x06\x16";
const PRIORITY_STEPS: [u8; 4] = [0, 3, 6, 9];
const SCHEDULED: &str = "openthreat.scheduled";
const DEAD_LETTER: &str = "openthreat.dead_letter";

/// How many expired leases one housekeeping pass restores at most.
const RESTORE_BATCH: isize = 100;

/// Restores a message only if its unacked entry is still the one we read, so
/// two restorers (or a restorer and a late ack) never produce two copies.
const RESTORE_LUA: &str = r"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur or (ARGV[2] ~= '' and cur ~= ARGV[2]) then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[1], ARGV[1])
for i = 3, #KEYS do redis.call('RPUSH', KEYS[i], ARGV[3]) end
return 1
";

/// Moves due deferred messages to the consuming end of their list.
const RELEASE_DUE_LUA: &str = r"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 100)
for _, m in ipairs(due) do
  local e = cjson.decode(m)
  redis.call('RPUSH', ARGV[2] .. e[1], e[2])
  redis.call('ZREM', KEYS[1], m)
end
return #due
";

/// Pops up to ARGV[2] messages without blocking, in priority order, and
/// records each in `unacked` + `unacked_index` in the same atomic step (so,
/// unlike BRPOP + a separate write, no message can be lost in between).
/// Returns flat triples `list key, payload, delivery tag` (tag empty when the
/// payload is not a kombu envelope; such a message is not recorded).
const POP_MANY_LUA: &str = r"
local out = {}
local n = tonumber(ARGV[2])
for i = 3, #KEYS do
  while #out < 3 * n do
    local raw = redis.call('RPOP', KEYS[i])
    if not raw then break end
    local ok, msg = pcall(cjson.decode, raw)
    local tag = ''
    if ok and type(msg) == 'table' and type(msg.properties) == 'table'
        and type(msg.properties.delivery_tag) == 'string' then
      tag = msg.properties.delivery_tag
      local di = msg.properties.delivery_info
      if type(di) ~= 'table' then di = {} end
      local ex = di.exchange
      local rk = di.routing_key
      if type(ex) ~= 'string' then ex = '' end
      if type(rk) ~= 'string' then rk = '' end
      redis.call('ZADD', KEYS[2], ARGV[1], tag)
      redis.call('HSET', KEYS[1], tag, '[' .. raw .. ',' .. cjson.encode(ex) .. ',' .. cjson.encode(rk) .. ']')
    end
    out[#out + 1] = KEYS[i]
    out[#out + 1] = raw
    out[#out + 1] = tag
  end
end
return out
";

/// Releases the restore mutex only if we still own it.
const UNLOCK_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// The auto-reconnecting multiplexed connection Redis components send their
/// ordinary (non-blocking) commands over.
pub(crate) async fn command_connection(
    client: &Client,
    response_timeout: Duration,
) -> Result<ConnectionManager> {
    let cfg = ConnectionManagerConfig::new()
        .set_response_timeout(Some(response_timeout))
        .set_connection_timeout(Some(Duration::from_secs(5)));
    Ok(client.get_connection_manager_with_config(cfg).await?)
}

/// A connection of its own for `BRPOP`, so a blocking pop never delays (nor
/// is delayed by) the commands on the shared connection. Opened on first use;
/// dropped after an error so the next pop reconnects.
pub(crate) struct BlockingConn {
    client: Client,
    conn: Mutex<Option<MultiplexedConnection>>,
}

impl BlockingConn {
    pub(crate) fn new(client: Client) -> Self {
        BlockingConn {
            client,
            conn: Mutex::new(None),
        }
    }

    /// `BRPOP keys… wait`: the list it popped from and the value, or `None`
    /// when nothing arrived in time.
    pub(crate) async fn brpop(
        &self,
        keys: &[String],
        wait: Duration,
    ) -> Result<Option<(String, String)>> {
        let mut conn = {
            let mut guard = self.conn.lock().await;
            match guard.as_ref() {
                Some(c) => c.clone(),
                None => {
                    let cfg = AsyncConnectionConfig::new()
                        .set_response_timeout(None)
                        .set_connection_timeout(Some(Duration::from_secs(5)));
                    let c = self
                        .client
                        .get_multiplexed_async_connection_with_config(&cfg)
                        .await?;
                    *guard = Some(c.clone());
                    c
                }
            }
        };
        let mut cmd = redis::cmd("BRPOP");
        cmd.arg(keys).arg(wait.as_secs_f64().max(0.01));
        match cmd.query_async(&mut conn).await {
            Ok(v) => Ok(v),
            Err(e) => {
                *self.conn.lock().await = None;
                Err(e.into())
            }
        }
    }
}

/// A member of kombu's binding set `_kombu.binding.<exchange>`:
/// `routing_key SEP pattern SEP queue` (we never bind with a pattern).
pub(crate) fn binding_member(routing_key: &str, queue: &str) -> String {
    format!("{routing_key}{SEP}{SEP}{queue}")
}

/// The queues among binding-set `members` bound with `routing_key`, as
/// kombu's `_lookup` matches them.
pub(crate) fn bound_queues(members: &[String], routing_key: &str) -> Vec<String> {
    members
        .iter()
        .filter_map(|m| {
            let mut parts = m.split(SEP);
            let rk = parts.next()?;
            let _pattern = parts.next()?;
            let queue = parts.next()?;
            (rk == routing_key).then(|| queue.to_owned())
        })
        .collect()
}

/// Redis broker. Cheap to share behind an `Arc`.
///
/// Commands go over one auto-reconnecting multiplexed connection (pipelined);
/// the blocking `BRPOP` gets its own connection so it never delays them.
pub struct RedisBroker {
    conn: ConnectionManager,
    blocking: BlockingConn,
    prefix: String,
    visibility_timeout: Duration,
    restore: Script,
    pop_many: Script,
    release_due: Script,
    unlock: Script,
}

impl std::fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password: show only what identifies the queue.
        f.debug_struct("RedisBroker")
            .field("prefix", &self.prefix)
            .field("visibility_timeout", &self.visibility_timeout)
            .finish_non_exhaustive()
    }
}

impl RedisBroker {
    /// Connects to `url` (`redis://` or `rediss://`).
    pub async fn connect(url: &str) -> Result<Self> {
        let client = Client::open(url)?;
        let conn = command_connection(&client, Duration::from_secs(30)).await?;
        Ok(RedisBroker {
            blocking: BlockingConn::new(client),
            conn,
            prefix: String::new(),
            visibility_timeout: DEFAULT_VISIBILITY_TIMEOUT,
            restore: Script::new(RESTORE_LUA),
            pop_many: Script::new(POP_MANY_LUA),
            release_due: Script::new(RELEASE_DUE_LUA),
            unlock: Script::new(UNLOCK_LUA),
        })
    }

    /// kombu's `global_keyprefix` transport option: prepended to every key.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// kombu's `visibility_timeout` transport option (default 3600 s).
    pub fn with_visibility_timeout(mut self, timeout: Duration) -> Self {
        self.visibility_timeout = timeout;
        self
    }

    fn key(&self, name: &str) -> String {
        format!("{}{}", self.prefix, name)
    }

    /// kombu's `_q_for_pri`: the list for the priority step at or below `pri`.
    fn list_name(queue: &str, pri: u8) -> String {
        let step = PRIORITY_STEPS
            .iter()
            .rev()
            .find(|s| **s <= pri)
            .copied()
            .unwrap_or(0);
        if step == 0 {
            queue.to_owned()
        } else {
            format!("{queue}{SEP}{step}")
        }
    }

    fn now() -> f64 {
        Utc::now().timestamp_micros() as f64 / 1e6
    }

    /// The queues a message published to (`exchange`, `routing_key`) lands in,
    /// as kombu's `_lookup` finds them.
    async fn lookup(&self, exchange: &str, routing_key: &str) -> Result<Vec<String>> {
        if exchange.is_empty() {
            return Ok(vec![routing_key.to_owned()]);
        }
        let mut conn = self.conn.clone();
        let members: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.key(&format!("_kombu.binding.{exchange}")))
            .query_async(&mut conn)
            .await?;
        let mut queues = bound_queues(&members, routing_key);
        if queues.is_empty() {
            queues.push(routing_key.to_owned());
        }
        Ok(queues)
    }

    /// Pushes the unacked entry `tag` back to its queue(s) if it is still
    /// `expected` (or present at all when `expected` is `None`).
    async fn restore_tag(&self, tag: &str, entry: &str, check: bool) -> Result<bool> {
        let parsed: Value = serde_json::from_str(entry)?;
        let (Some(mut payload), Some(ex), Some(rk)) = (
            parsed.get(0).cloned(),
            parsed.get(1).and_then(Value::as_str),
            parsed.get(2).and_then(Value::as_str),
        ) else {
            return Err(Error::Protocol(format!("bad unacked entry for {tag}")));
        };
        if let Some(h) = payload.get_mut("headers").and_then(Value::as_object_mut) {
            h.insert("redelivered".into(), Value::Bool(true));
        }
        if let Some(d) = payload
            .get_mut("properties")
            .and_then(|p| p.get_mut("delivery_info"))
            .and_then(Value::as_object_mut)
        {
            d.insert("redelivered".into(), Value::Bool(true));
        }
        let pri = payload
            .get("properties")
            .and_then(|p| p.get("priority"))
            .and_then(Value::as_u64)
            .unwrap_or(0)
            .min(9) as u8;
        let queues = self.lookup(ex, rk).await?;
        let mut inv = self.restore.prepare_invoke();
        inv.key(self.key("unacked")).key(self.key("unacked_index"));
        for q in &queues {
            inv.key(self.key(&Self::list_name(q, pri)));
        }
        inv.arg(tag)
            .arg(if check { entry } else { "" })
            .arg(payload.to_string());
        let mut conn = self.conn.clone();
        let n: i64 = inv.invoke_async(&mut conn).await?;
        Ok(n == 1)
    }

    /// The queue a (prefixed) list key belongs to.
    fn queue_of(&self, key: &str) -> String {
        let list = key.strip_prefix(&self.prefix).unwrap_or(key);
        match list.rsplit_once(SEP) {
            Some((q, _)) => q.to_owned(),
            None => list.to_owned(),
        }
    }
}

#[async_trait]
impl Broker for RedisBroker {
    async fn publish(&self, message: &Message) -> Result<()> {
        let key = self.key(&Self::list_name(message.queue(), message.priority()));
        let mut conn = self.conn.clone();
        let _: i64 = redis::cmd("LPUSH")
            .arg(key)
            .arg(message.encode())
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    async fn declare(&self, queues: &[String]) -> Result<()> {
        // Celery's default: a direct exchange named like the queue, routing key = queue.
        let mut pipe = redis::pipe();
        for q in queues {
            let member = binding_member(q, q);
            pipe.cmd("SADD")
                .arg(self.key(&format!("_kombu.binding.{q}")))
                .arg(&member)
                .ignore();
            pipe.cmd("SADD")
                .arg(self.key(&format!("_kombu.binding_permanent.{q}")))
                .arg(&member)
                .ignore();
        }
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn).await?;
        Ok(())
    }

    async fn fetch(&self, queues: &[String], max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        if queues.is_empty() || max == 0 {
            tokio::time::sleep(wait).await;
            return Ok(Vec::new());
        }
        let lists: Vec<String> = PRIORITY_STEPS
            .iter()
            .flat_map(|step| {
                queues
                    .iter()
                    .map(move |q| self.key(&Self::list_name(q, *step)))
            })
            .collect();
        // Fast path: whatever is already waiting, leased in one atomic script.
        let mut inv = self.pop_many.prepare_invoke();
        inv.key(self.key("unacked")).key(self.key("unacked_index"));
        for l in &lists {
            inv.key(l);
        }
        inv.arg(Self::now()).arg(max);
        let mut conn = self.conn.clone();
        let flat: Vec<String> = inv.invoke_async(&mut conn).await?;
        if !flat.is_empty() {
            return Ok(flat
                .chunks_exact(3)
                .map(|t| {
                    let tag = if t[2].is_empty() {
                        uuid::Uuid::new_v4().to_string()
                    } else {
                        t[2].clone()
                    };
                    Delivery {
                        raw: t[1].clone(),
                        tag,
                        queue: self.queue_of(&t[0]),
                        row: None,
                    }
                })
                .collect());
        }
        // Nothing waiting: block on BRPOP (kombu's way) for up to `wait`.
        let popped = self.blocking.brpop(&lists, wait).await?;
        let Some((key, raw)) = popped else {
            return Ok(Vec::new());
        };
        let queue = self.queue_of(&key);
        let Some((tag, info, _)) = peek(&raw) else {
            // Not even an envelope: nothing to restore it as; the worker
            // dead-letters it straight away.
            return Ok(vec![Delivery {
                raw,
                tag: uuid::Uuid::new_v4().to_string(),
                queue,
                row: None,
            }]);
        };
        let tag = tag.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let entry = format!(
            "[{raw},{},{}]",
            serde_json::to_string(&info.exchange)?,
            serde_json::to_string(&info.routing_key)?
        );
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("ZADD")
            .arg(self.key("unacked_index"))
            .arg(Self::now())
            .arg(&tag)
            .ignore()
            .cmd("HSET")
            .arg(self.key("unacked"))
            .arg(&tag)
            .arg(entry)
            .ignore();
        pipe.query_async::<()>(&mut conn).await?;
        Ok(vec![Delivery {
            raw,
            tag,
            queue,
            row: None,
        }])
    }

    async fn ack(&self, delivery: &Delivery) -> Result<()> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("ZREM")
            .arg(self.key("unacked_index"))
            .arg(&delivery.tag)
            .ignore()
            .cmd("HDEL")
            .arg(self.key("unacked"))
            .arg(&delivery.tag)
            .ignore();
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn).await?;
        Ok(())
    }

    async fn requeue(&self, delivery: &Delivery) -> Result<()> {
        let mut conn = self.conn.clone();
        let entry: Option<String> = redis::cmd("HGET")
            .arg(self.key("unacked"))
            .arg(&delivery.tag)
            .query_async(&mut conn)
            .await?;
        match entry {
            Some(entry) => {
                self.restore_tag(&delivery.tag, &entry, false).await?;
            }
            None => {
                // Not tracked (was undecodable): put the raw text back as is.
                let _: i64 = redis::cmd("RPUSH")
                    .arg(self.key(&delivery.queue))
                    .arg(&delivery.raw)
                    .query_async(&mut conn)
                    .await?;
            }
        }
        Ok(())
    }

    async fn defer(&self, delivery: &Delivery, eta: DateTime<Utc>) -> Result<()> {
        let pri = peek(&delivery.raw).map(|p| p.2).unwrap_or(0);
        let member =
            serde_json::to_string(&(Self::list_name(&delivery.queue, pri), &delivery.raw))?;
        let score = eta.timestamp_micros() as f64 / 1e6;
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("ZADD")
            .arg(self.key(SCHEDULED))
            .arg(score)
            .arg(member)
            .ignore()
            .cmd("ZREM")
            .arg(self.key("unacked_index"))
            .arg(&delivery.tag)
            .ignore()
            .cmd("HDEL")
            .arg(self.key("unacked"))
            .arg(&delivery.tag)
            .ignore();
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn).await?;
        Ok(())
    }

    async fn dead_letter(&self, delivery: &Delivery, reason: &str) -> Result<()> {
        let dl = DeadLetter {
            queue: delivery.queue.clone(),
            reason: reason.to_owned(),
            payload: delivery.raw.clone(),
            at: Utc::now(),
        };
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("LPUSH")
            .arg(self.key(DEAD_LETTER))
            .arg(serde_json::to_string(&dl)?)
            .ignore()
            .cmd("ZREM")
            .arg(self.key("unacked_index"))
            .arg(&delivery.tag)
            .ignore()
            .cmd("HDEL")
            .arg(self.key("unacked"))
            .arg(&delivery.tag)
            .ignore();
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn).await?;
        Ok(())
    }

    async fn touch(&self, deliveries: &[Delivery]) -> Result<()> {
        if deliveries.is_empty() {
            return Ok(());
        }
        let now = Self::now();
        let mut pipe = redis::pipe();
        for d in deliveries {
            // XX: never resurrect an entry someone already acked or restored.
            pipe.cmd("ZADD")
                .arg(self.key("unacked_index"))
                .arg("XX")
                .arg(now)
                .arg(&d.tag)
                .ignore();
        }
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn).await?;
        Ok(())
    }

    async fn restore_visible(&self) -> Result<usize> {
        let mut conn = self.conn.clone();
        let mut moved: i64 = self
            .release_due
            .key(self.key(SCHEDULED))
            .arg(Self::now())
            .arg(&self.prefix)
            .invoke_async(&mut conn)
            .await?;

        let token = uuid::Uuid::new_v4().to_string();
        let locked: Option<String> = redis::cmd("SET")
            .arg(self.key("unacked_mutex"))
            .arg(&token)
            .arg("NX")
            .arg("EX")
            .arg(300)
            .query_async(&mut conn)
            .await?;
        if locked.is_none() {
            return Ok(moved as usize);
        }
        let ceil = Self::now() - self.visibility_timeout.as_secs_f64();
        let result: Result<()> = async {
            let tags: Vec<String> = redis::cmd("ZRANGEBYSCORE")
                .arg(self.key("unacked_index"))
                .arg("-inf")
                .arg(ceil)
                .arg("LIMIT")
                .arg(0)
                .arg(RESTORE_BATCH)
                .query_async(&mut conn)
                .await?;
            for tag in tags {
                let entry: Option<String> = redis::cmd("HGET")
                    .arg(self.key("unacked"))
                    .arg(&tag)
                    .query_async(&mut conn)
                    .await?;
                match entry {
                    Some(entry) => match self.restore_tag(&tag, &entry, true).await {
                        Ok(true) => moved += 1,
                        Ok(false) => {}
                        Err(e) => {
                            tracing::error!(%tag, error = %e, "could not restore unacked message")
                        }
                    },
                    None => {
                        let _: i64 = redis::cmd("ZREM")
                            .arg(self.key("unacked_index"))
                            .arg(&tag)
                            .query_async(&mut conn)
                            .await?;
                    }
                }
            }
            Ok(())
        }
        .await;
        let _: i64 = self
            .unlock
            .key(self.key("unacked_mutex"))
            .arg(&token)
            .invoke_async(&mut conn)
            .await?;
        result?;
        Ok(moved as usize)
    }

    async fn purge(&self, queue: &str) -> Result<u64> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for step in PRIORITY_STEPS {
            let k = self.key(&Self::list_name(queue, step));
            pipe.cmd("LLEN").arg(&k).cmd("DEL").arg(&k).ignore();
        }
        let mut conn = self.conn.clone();
        let lens: Vec<u64> = pipe.query_async(&mut conn).await?;
        Ok(lens.iter().sum())
    }

    async fn queue_lengths(&self, queues: &[String]) -> Result<Vec<(String, u64)>> {
        let mut pipe = redis::pipe();
        for q in queues {
            for step in PRIORITY_STEPS {
                pipe.cmd("LLEN").arg(self.key(&Self::list_name(q, step)));
            }
        }
        let mut conn = self.conn.clone();
        let lens: Vec<u64> = pipe.query_async(&mut conn).await?;
        Ok(queues
            .iter()
            .cloned()
            .zip(lens.chunks(PRIORITY_STEPS.len()).map(|c| c.iter().sum()))
            .collect())
    }

    async fn priority_lengths(&self, queues: &[String]) -> Result<Vec<(String, u8, u64)>> {
        let mut pipe = redis::pipe();
        for q in queues {
            for step in PRIORITY_STEPS {
                pipe.cmd("LLEN").arg(self.key(&Self::list_name(q, step)));
            }
        }
        let mut conn = self.conn.clone();
        let lens: Vec<u64> = pipe.query_async(&mut conn).await?;
        let mut out = Vec::new();
        for (q, chunk) in queues.iter().zip(lens.chunks(PRIORITY_STEPS.len())) {
            for (step, n) in PRIORITY_STEPS.iter().zip(chunk) {
                if *n > 0 {
                    out.push((q.clone(), *step, *n));
                }
            }
        }
        Ok(out)
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        let raw: Vec<String> = redis::cmd("LRANGE")
            .arg(self.key(DEAD_LETTER))
            .arg(0)
            .arg(limit as i64 - 1)
            .query_async(&mut conn)
            .await?;
        Ok(raw
            .iter()
            .filter_map(|r| serde_json::from_str(r).ok())
            .collect())
    }

    async fn purge_dead_letters(&self) -> Result<u64> {
        let mut pipe = redis::pipe();
        let k = self.key(DEAD_LETTER);
        pipe.atomic()
            .cmd("LLEN")
            .arg(&k)
            .cmd("DEL")
            .arg(&k)
            .ignore();
        let mut conn = self.conn.clone();
        let (n,): (u64,) = pipe.query_async(&mut conn).await?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_lists_follow_kombu_steps() {
        assert_eq!(RedisBroker::list_name("celery", 0), "celery");
        assert_eq!(RedisBroker::list_name("celery", 2), "celery");
        assert_eq!(RedisBroker::list_name("celery", 3), "celery\x06\x163");
        assert_eq!(RedisBroker::list_name("celery", 8), "celery\x06\x166");
        assert_eq!(RedisBroker::list_name("celery", 9), "celery\x06\x169");
    }
}
