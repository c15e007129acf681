//! `connect_broker` / `connect_backend` pick the implementation by URL.

mod common;

use std::time::Duration;

use openthreat_queue::{connect_backend, connect_broker, Error, Producer, SendOptions};
use serde_json::Map;

#[tokio::test]
async fn sqlite_url_is_durable_across_reconnects() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("q.db").display());
    {
        let producer = Producer::new(
            connect_broker(&url).await.unwrap(),
            connect_backend(&url).await.unwrap(),
        );
        producer
            .send_task("x.y", vec![], Map::new(), SendOptions::queue("q"))
            .await
            .unwrap();
    }
    // A new connection (as after a restart) sees the message.
    let broker = connect_broker(&url).await.unwrap();
    assert_eq!(
        broker.queue_lengths(&["q".into()]).await.unwrap(),
        vec![("q".into(), 1)]
    );
    let got = broker
        .fetch(&["q".into()], 10, Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
}

#[tokio::test]
async fn redis_url_with_prefix() {
    if !common::redis_available().await {
        return;
    }
    let prefix = format!("{}:", common::unique("otq-connect"));
    let url = format!("{}?global_keyprefix={prefix}", common::REDIS_URL);
    let broker = connect_broker(&url).await.unwrap();
    let producer = Producer::new(broker.clone(), connect_backend(&url).await.unwrap());
    producer
        .send_task("x.y", vec![], Map::new(), SendOptions::queue("q"))
        .await
        .unwrap();
    let c = redis::Client::open(common::REDIS_URL).unwrap();
    let mut conn = c.get_multiplexed_async_connection().await.unwrap();
    let n: i64 = redis::cmd("LLEN")
        .arg(format!("{prefix}q"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, 1, "kombu's key, behind the prefix");
    assert_eq!(broker.purge("q").await.unwrap(), 1);
}

#[tokio::test]
async fn unknown_scheme_is_an_error() {
    assert!(matches!(
        connect_broker("amqp://guest@localhost//").await,
        Err(Error::Url(_))
    ));
    assert!(matches!(
        connect_backend("postgres://x").await,
        Err(Error::Url(_))
    ));
}
