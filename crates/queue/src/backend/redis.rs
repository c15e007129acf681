//! Redis result backend, as Celery's: `celery-task-meta-<id>` set with SETEX,
//! then PUBLISHed on a channel of the same name (Python's `AsyncResult.get()`
//! subscribes to it).

use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Script};

use super::{ResultBackend, TaskMeta, DEFAULT_RESULT_EXPIRES};
use crate::error::{Error, Result};

/// SETEX + PUBLISH in one step, skipped when a SUCCESS is already stored.
const STORE_LUA: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur and string.find(cur, '"status"%s*:%s*"SUCCESS"') then return 0 end
redis.call('SETEX', KEYS[1], ARGV[2], ARGV[1])
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
"#;

/// Redis result backend.
pub struct RedisBackend {
    client: Client,
    conn: ConnectionManager,
    prefix: String,
    expires: Duration,
    store: Script,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("prefix", &self.prefix)
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

impl RedisBackend {
    /// Connects to `url`.
    pub async fn connect(url: &str) -> Result<Self> {
        let client = Client::open(url)?;
        let cfg = ConnectionManagerConfig::new()
            .set_response_timeout(Some(Duration::from_secs(30)))
            .set_connection_timeout(Some(Duration::from_secs(5)));
        let conn = client.get_connection_manager_with_config(cfg).await?;
        Ok(RedisBackend {
            client,
            conn,
            prefix: String::new(),
            expires: DEFAULT_RESULT_EXPIRES,
            store: Script::new(STORE_LUA),
        })
    }

    /// Celery's `result_backend_transport_options={"global_keyprefix": ...}`.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Celery's `result_expires` (default one day).
    pub fn with_expires(mut self, expires: Duration) -> Self {
        self.expires = expires;
        self
    }

    fn key(&self, task_id: &str) -> String {
        format!("{}celery-task-meta-{}", self.prefix, task_id)
    }
}

#[async_trait]
impl ResultBackend for RedisBackend {
    async fn store(&self, meta: &TaskMeta) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: i64 = self
            .store
            .key(self.key(&meta.task_id))
            .arg(serde_json::to_string(meta)?)
            .arg(self.expires.as_secs().max(1))
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    async fn get(&self, task_id: &str) -> Result<Option<TaskMeta>> {
        let mut conn = self.conn.clone();
        let raw: Option<String> = redis::cmd("GET")
            .arg(self.key(task_id))
            .query_async(&mut conn)
            .await?;
        raw.map(|r| serde_json::from_str(&r).map_err(Error::from))
            .transpose()
    }

    async fn wait(&self, task_id: &str, timeout: Duration) -> Result<TaskMeta> {
        let key = self.key(task_id);
        let fut = async {
            // Subscribe first, then read: a result stored in between is seen by one of them.
            let mut pubsub = self.client.get_async_pubsub().await?;
            pubsub.subscribe(&key).await?;
            if let Some(m) = self.get(task_id).await? {
                if m.status.is_ready() {
                    return Ok(m);
                }
            }
            let mut stream = pubsub.on_message();
            while let Some(msg) = stream.next().await {
                let payload: String = msg.get_payload()?;
                let meta: TaskMeta = serde_json::from_str(&payload)?;
                if meta.status.is_ready() {
                    return Ok(meta);
                }
            }
            Err(Error::Protocol("result subscription closed".into()))
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| Error::Timeout(timeout))?
    }

    async fn forget(&self, task_id: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: i64 = redis::cmd("DEL")
            .arg(self.key(task_id))
            .query_async(&mut conn)
            .await?;
        Ok(())
    }
}
