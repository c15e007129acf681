//! Brokers: where messages wait until a worker takes them.
//!
//! Both brokers give the same guarantees, so the worker is written once
//! against [`Broker`]: a fetched message is *leased*, not removed; it is gone
//! only after [`Broker::ack`]. A lease that is neither acked nor refreshed
//! (the worker died) becomes visible again after the visibility timeout.

use std::fmt::Debug;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::message::Message;

pub mod redis;
pub mod sqlite;

/// Default visibility timeout: kombu's 1 hour.
pub const DEFAULT_VISIBILITY_TIMEOUT: Duration = Duration::from_secs(3600);

/// A leased message, as fetched. `raw` is the envelope exactly as stored, so a
/// message can be dead-lettered even when it cannot be decoded.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The envelope JSON as it was in the broker.
    pub raw: String,
    /// Lease identity: kombu's `delivery_tag` on Redis, a lease token on SQLite.
    pub tag: String,
    /// The queue it was fetched from.
    pub queue: String,
    /// SQLite row id; unused on Redis.
    pub(crate) row: Option<i64>,
}

/// A message a worker refused, with the reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Queue the message came from.
    pub queue: String,
    /// Why it was refused (undecodable, unknown task, bad arguments).
    pub reason: String,
    /// The envelope as it was received.
    pub payload: String,
    /// When it was refused.
    pub at: DateTime<Utc>,
}

/// The operations the worker, the producer and the CLI need from a broker.
#[async_trait]
pub trait Broker: Send + Sync + Debug + 'static {
    /// Appends a message to its queue (`delivery_info.routing_key`) at its priority.
    async fn publish(&self, message: &Message) -> Result<()>;
    /// Makes `queues` known (kombu's binding sets), so Python workers can
    /// restore our unacked messages. Idempotent.
    async fn declare(&self, queues: &[String]) -> Result<()>;
    /// Leases up to `max` messages from `queues` (priority 0 first), waiting
    /// up to `wait` for the first one. Empty when nothing arrived in time.
    ///
    /// Batches matter for throughput: one round trip can lease many messages.
    async fn fetch(&self, queues: &[String], max: usize, wait: Duration) -> Result<Vec<Delivery>>;
    /// Done with it: removes it for good.
    async fn ack(&self, delivery: &Delivery) -> Result<()>;
    /// Gives it back at the head of its queue (warm shutdown).
    async fn requeue(&self, delivery: &Delivery) -> Result<()>;
    /// Holds it in the broker until `eta` and then makes it visible again,
    /// ending the current lease (how ETA tasks survive the visibility timeout).
    async fn defer(&self, delivery: &Delivery, eta: DateTime<Utc>) -> Result<()>;
    /// Moves it to the dead letters with `reason` and ends the lease.
    async fn dead_letter(&self, delivery: &Delivery, reason: &str) -> Result<()>;
    /// Renews the leases of messages still being worked on.
    async fn touch(&self, deliveries: &[Delivery]) -> Result<()>;
    /// Housekeeping: restores messages whose lease expired and releases
    /// deferred messages that are due. Returns how many were moved.
    async fn restore_visible(&self) -> Result<usize>;
    /// Deletes the waiting messages of `queue` (not leased ones, not dead letters).
    async fn purge(&self, queue: &str) -> Result<u64>;
    /// Waiting messages per queue, all priorities summed.
    async fn queue_lengths(&self, queues: &[String]) -> Result<Vec<(String, u64)>>;
    /// Waiting messages per queue and priority (Redis: per priority step
    /// list, 0/3/6/9; SQLite: per exact priority), non-empty ones only.
    async fn priority_lengths(&self, queues: &[String]) -> Result<Vec<(String, u8, u64)>>;
    /// The most recent dead letters, newest first.
    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>>;
    /// Deletes all dead letters.
    async fn purge_dead_letters(&self) -> Result<u64>;
}
