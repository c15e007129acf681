//! Monitoring and remote control in Celery's formats: events on the
//! `celeryev` exchange and commands over the `celery.pidbox` mailbox, carried
//! by a [`Fanout`] (Redis pub/sub in kombu's layout, or SQLite tables).
//!
//! The worker uses [`EventDispatcher`] and [`Node`]; the CLI and the server
//! use [`EventReceiver`] and [`Mailbox`]. Python's `celery inspect`,
//! `celery events` and Flower speak the same protocol.

pub mod envelope;
pub mod events;
pub mod fanout;
pub mod pidbox;

pub use envelope::Envelope;
pub use events::{EventDispatcher, EventReceiver, EVENT_EXCHANGE};
pub use fanout::{Fanout, RedisFanout, SqliteFanout, Subscription};
pub use pidbox::{Broadcast, Commands, Mailbox, Node, Request, PIDBOX_EXCHANGE, REPLY_EXCHANGE};
