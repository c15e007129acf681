//! The beat loop on a controlled clock: exactly once per slot with racing
//! beats, restarts, intervals, disabled entries and a Redis outage — on the
//! in-memory, SQLite and Redis stores. No test sleeps on real time.

// Wrapped in `mod beat` so `cargo test -p openthreat-queue beat` selects these tests.
mod beat {
    use std::collections::BTreeMap;
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use async_trait::async_trait;
    use chrono::{DateTime, Utc};
    use openthreat_queue::beat::{
        default_schedule, Beat, BeatError, BeatStore, Claim, Crontab, Entry, Interval, ManualClock,
        MemoryBeatStore, Publisher, RedisBeatStore, Schedule, SqliteBeatStore,
    };
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::task::JoinHandle;
    use tokio_util::sync::CancellationToken;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    /// One publish: entry, slot, and the beat that sent it.
    type Fired = (String, DateTime<Utc>, String);

    /// A publisher that records what it was asked to send, shared by all beats
    /// of a test so duplicates across beats show up.
    #[derive(Clone, Default)]
    struct Recorder {
        log: Arc<Mutex<Vec<Fired>>>,
    }

    struct Labelled {
        recorder: Recorder,
        label: String,
    }

    #[async_trait]
    impl Publisher for Labelled {
        async fn publish(&self, entry: &Entry, slot: DateTime<Utc>) -> Result<String, BeatError> {
            let mut log = self.recorder.log.lock().unwrap();
            log.push((entry.name.clone(), slot, self.label.clone()));
            Ok(format!("task-{}", log.len()))
        }
    }

    impl Recorder {
        fn publisher(&self, label: &str) -> Arc<dyn Publisher> {
            Arc::new(Labelled {
                recorder: self.clone(),
                label: label.to_string(),
            })
        }

        fn fired(&self) -> Vec<Fired> {
            self.log.lock().unwrap().clone()
        }

        /// (entry, slot) → how many times it was published.
        fn counts(&self) -> BTreeMap<(String, DateTime<Utc>), usize> {
            let mut counts = BTreeMap::new();
            for (entry, slot, _) in self.fired() {
                *counts.entry((entry, slot)).or_insert(0) += 1;
            }
            counts
        }

        fn assert_no_duplicates(&self) {
            for ((entry, slot), n) in self.counts() {
                assert_eq!(n, 1, "{entry} fired {n} times for slot {slot}");
            }
        }

        fn slots_of(&self, entry: &str) -> Vec<DateTime<Utc>> {
            let mut slots: Vec<_> = self
                .fired()
                .into_iter()
                .filter(|(e, _, _)| e == entry)
                .map(|(_, s, _)| s)
                .collect();
            slots.sort();
            slots
        }
    }

    /// Every slot of every enabled entry in (from, to].
    fn expected_slots(
        entries: &[Entry],
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Vec<(String, DateTime<Utc>)> {
        let mut out = Vec::new();
        for e in entries.iter().filter(|e| e.enabled) {
            let mut at = from;
            while let Some(s) = e.schedule.next_after(at) {
                if s > to {
                    break;
                }
                out.push((e.name.clone(), s));
                at = s;
            }
        }
        out.sort();
        out
    }

    struct Running {
        shutdown: CancellationToken,
        handle: JoinHandle<Result<(), BeatError>>,
    }

    impl Running {
        async fn stop(self) {
            self.shutdown.cancel();
            tokio::time::timeout(Duration::from_secs(10), self.handle)
                .await
                .expect("beat stops promptly")
                .unwrap()
                .unwrap();
        }
    }

    fn spawn_beat(beat: Beat) -> Running {
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let handle = tokio::spawn(async move { beat.run(token).await });
        Running { shutdown, handle }
    }

    /// Waits (on real time, bounded) until `n` beats are parked on the clock.
    async fn settle(clock: &ManualClock, n: usize) {
        tokio::time::timeout(Duration::from_secs(20), clock.wait_for_sleepers(n))
            .await
            .expect("beats settle on the clock");
    }

    /// Moves the clock forward `total` in steps of `step`, letting `n` beats
    /// finish everything due after each step.
    async fn drive(clock: &ManualClock, n: usize, total: Duration, step: Duration) {
        let mut done = Duration::ZERO;
        while done < total {
            clock.advance(step);
            done += step;
            settle(clock, n).await;
        }
    }

    fn heartbeat(every: &str) -> Entry {
        Entry::new(
            "heartbeat",
            "backend.tasks.test_task",
            Schedule::Interval(Interval::parse(every).unwrap()),
        )
    }

    fn schedule_under_test() -> Vec<Entry> {
        let mut entries = default_schedule();
        entries.push(heartbeat("30s"));
        entries
    }

    // ---------------------------------------------------------------------------
    // Stores

    async fn sqlite_pool(path: &std::path::Path) -> sqlx::SqlitePool {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(10));
        SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .unwrap()
    }

    const REDIS_ADDR: &str = "127.0.0.1:6379";

    /// Whether Redis is reachable; fails the test under CI when it is not.
    async fn redis_available() -> bool {
        let probe = async {
            let client = redis::Client::open(format!("redis://{REDIS_ADDR}/"))?;
            let mut conn = client.get_multiplexed_async_connection().await?;
            redis::cmd("PING").query_async::<String>(&mut conn).await
        };
        match tokio::time::timeout(Duration::from_secs(3), probe).await {
            Ok(Ok(_)) => true,
            outcome => {
                let reason = match outcome {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".to_string(),
                };
                if std::env::var_os("CI").is_some() {
                    panic!("Redis at {REDIS_ADDR} is required under CI: {reason}");
                }
                eprintln!("skipping: Redis at {REDIS_ADDR} unreachable: {reason}");
                false
            }
        }
    }

    /// A unique key prefix per test run, removed at the end.
    struct RedisPrefix(String);

    impl RedisPrefix {
        fn new(test: &str) -> Self {
            RedisPrefix(format!(
                "openthreat-test:beat:{test}:{}:{}:",
                std::process::id(),
                Utc::now().timestamp_nanos_opt().unwrap_or_default()
            ))
        }

        fn store(&self, addr: &str) -> RedisBeatStore {
            RedisBeatStore::connect(&format!("redis://{addr}/"), self.0.clone()).unwrap()
        }

        async fn cleanup(&self) {
            if let Ok(client) = redis::Client::open(format!("redis://{REDIS_ADDR}/")) {
                if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
                    let _: Result<(), _> = redis::cmd("DEL")
                        .arg(format!("{}last_run", self.0))
                        .arg(format!("{}owner", self.0))
                        .query_async(&mut conn)
                        .await;
                }
            }
        }
    }

    /// The contract every store honours.
    async fn claim_contract(store: &dyn BeatStore) {
        let s = t("2026-03-01T10:00:00Z");
        let later = t("2026-03-01T10:05:00Z");
        assert_eq!(store.last_run("e").await.unwrap(), None);
        assert_eq!(store.claim("e", s, "a").await.unwrap(), Claim::Won);
        // The same owner retrying (reply lost) still owns it; another owner does not.
        assert_eq!(store.claim("e", s, "a").await.unwrap(), Claim::Won);
        assert_eq!(store.claim("e", s, "b").await.unwrap(), Claim::Lost);
        // Never an earlier slot again.
        assert_eq!(
            store
                .claim("e", s - chrono::Duration::minutes(5), "c")
                .await
                .unwrap(),
            Claim::Lost
        );
        assert_eq!(store.last_run("e").await.unwrap(), Some(s));
        assert_eq!(store.claim("e", later, "b").await.unwrap(), Claim::Won);
        assert_eq!(store.claim("e", s, "a").await.unwrap(), Claim::Lost);
        assert_eq!(store.last_run("e").await.unwrap(), Some(later));
        // Entries are independent.
        assert_eq!(store.claim("other", s, "a").await.unwrap(), Claim::Won);
    }

    /// Many owners claiming one slot concurrently: exactly one wins.
    async fn claim_race(stores: &[Arc<dyn BeatStore>]) {
        for round in 0..5 {
            let slot = t("2026-03-01T10:00:00Z") + chrono::Duration::minutes(round);
            let mut tasks = Vec::new();
            for (i, store) in stores.iter().enumerate() {
                for j in 0..4 {
                    let store = store.clone();
                    tasks.push(tokio::spawn(async move {
                        store
                            .claim("race", slot, &format!("owner-{i}-{j}"))
                            .await
                            .unwrap()
                    }));
                }
            }
            let mut won = 0;
            for task in tasks {
                if task.await.unwrap() == Claim::Won {
                    won += 1;
                }
            }
            assert_eq!(won, 1, "round {round}");
        }
    }

    #[tokio::test]
    async fn memory_store_contract() {
        let store = MemoryBeatStore::new();
        claim_contract(&store).await;
        let shared: Arc<dyn BeatStore> = Arc::new(MemoryBeatStore::new());
        claim_race(&[shared.clone(), shared]).await;
    }

    #[tokio::test]
    async fn sqlite_store_contract_and_race_across_pools() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("beat.db");
        let store = SqliteBeatStore::new(sqlite_pool(&path).await)
            .await
            .unwrap();
        claim_contract(&store).await;
        let a: Arc<dyn BeatStore> = Arc::new(
            SqliteBeatStore::new(sqlite_pool(&path).await)
                .await
                .unwrap(),
        );
        let b: Arc<dyn BeatStore> = Arc::new(
            SqliteBeatStore::new(sqlite_pool(&path).await)
                .await
                .unwrap(),
        );
        claim_race(&[a, b]).await;
    }

    #[tokio::test]
    async fn redis_store_contract_and_race() {
        if !redis_available().await {
            return;
        }
        let prefix = RedisPrefix::new("contract");
        claim_contract(&prefix.store(REDIS_ADDR)).await;
        let a: Arc<dyn BeatStore> = Arc::new(prefix.store(REDIS_ADDR));
        let b: Arc<dyn BeatStore> = Arc::new(prefix.store(REDIS_ADDR));
        claim_race(&[a, b]).await;
        prefix.cleanup().await;
    }

    // ---------------------------------------------------------------------------
    // Two beats racing for ten simulated minutes

    async fn two_beats_race(make_store: impl Fn() -> Arc<dyn BeatStore>) {
        let start = t("2026-03-01T09:59:30Z");
        let clock = ManualClock::new(start);
        let recorder = Recorder::default();
        let entries = schedule_under_test();
        let beats: Vec<Running> = ["a", "b"]
            .iter()
            .map(|label| start_beat(&entries, make_store(), recorder.publisher(label), &clock))
            .collect();
        settle(&clock, 2).await;
        drive(&clock, 2, Duration::from_secs(600), Duration::from_secs(1)).await;
        for beat in beats {
            beat.stop().await;
        }

        recorder.assert_no_duplicates();
        let got: Vec<(String, DateTime<Utc>)> = recorder.counts().into_keys().collect();
        let want = expected_slots(&entries, start, start + chrono::Duration::seconds(600));
        assert_eq!(got, want);
        // The 10:00 slot fires every entry that has one; clean-cache none.
        assert_eq!(
            recorder.slots_of("process-new-cves"),
            vec![t("2026-03-01T10:00:00Z"), t("2026-03-01T10:05:00Z")]
        );
        assert_eq!(
            recorder.slots_of("process-low-priority"),
            vec![t("2026-03-01T10:00:00Z")]
        );
        assert!(recorder.slots_of("clean-cache").is_empty());
        assert_eq!(recorder.slots_of("heartbeat").len(), 20);
    }

    fn start_beat(
        entries: &[Entry],
        store: Arc<dyn BeatStore>,
        publisher: Arc<dyn Publisher>,
        clock: &ManualClock,
    ) -> Running {
        spawn_beat(Beat::new(
            entries.to_vec(),
            store,
            publisher,
            Arc::new(clock.clone()),
        ))
    }

    #[tokio::test]
    async fn two_beats_race_on_sqlite_fire_each_slot_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("beat.db");
        // Two pools on one file, as two processes would have.
        let a: Arc<dyn BeatStore> = Arc::new(
            SqliteBeatStore::new(sqlite_pool(&path).await)
                .await
                .unwrap(),
        );
        let b: Arc<dyn BeatStore> = Arc::new(
            SqliteBeatStore::new(sqlite_pool(&path).await)
                .await
                .unwrap(),
        );
        let stores = Mutex::new(vec![a, b]);
        two_beats_race(|| stores.lock().unwrap().pop().unwrap()).await;
    }

    #[tokio::test]
    async fn two_beats_race_on_redis_fire_each_slot_once() {
        if !redis_available().await {
            return;
        }
        let prefix = RedisPrefix::new("race");
        two_beats_race(|| Arc::new(prefix.store(REDIS_ADDR))).await;
        prefix.cleanup().await;
    }

    #[tokio::test]
    async fn two_beats_race_on_one_memory_store() {
        let shared: Arc<dyn BeatStore> = Arc::new(MemoryBeatStore::new());
        two_beats_race(|| shared.clone()).await;
    }

    // ---------------------------------------------------------------------------
    // Restarts

    #[tokio::test]
    async fn restart_after_a_gap_fires_missed_entries_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("beat.db");
        let pool = sqlite_pool(&path).await;
        let clock = ManualClock::new(t("2026-03-01T09:59:30Z"));
        let recorder = Recorder::default();
        let entries = schedule_under_test();

        // First life: fires the 10:00 slots, then stops.
        let store: Arc<dyn BeatStore> = Arc::new(SqliteBeatStore::new(pool.clone()).await.unwrap());
        let first = start_beat(&entries, store, recorder.publisher("first"), &clock);
        settle(&clock, 1).await;
        drive(&clock, 1, Duration::from_secs(60), Duration::from_secs(1)).await;
        first.stop().await;
        let before = recorder.fired().len();
        assert_eq!(
            before,
            6 + 2,
            "six 10:00 entries and two heartbeats: {:?}",
            recorder.fired()
        );

        // Down from 10:00:30 to 10:37:10. Two new processes start at once (a
        // restart overlapping another): each missed entry fires once, for its
        // latest slot.
        clock.set(t("2026-03-01T10:37:10Z"));
        let p2 = sqlite_pool(&path).await;
        let second = start_beat(
            &entries,
            Arc::new(SqliteBeatStore::new(pool.clone()).await.unwrap()),
            recorder.publisher("second"),
            &clock,
        );
        let third = start_beat(
            &entries,
            Arc::new(SqliteBeatStore::new(p2).await.unwrap()),
            recorder.publisher("third"),
            &clock,
        );
        settle(&clock, 2).await;
        let after: Vec<(String, DateTime<Utc>)> = recorder.fired()[before..]
            .iter()
            .map(|(e, s, _)| (e.clone(), *s))
            .collect();
        let mut after_sorted = after.clone();
        after_sorted.sort();
        assert_eq!(
            after_sorted,
            vec![
                ("heartbeat".to_string(), t("2026-03-01T10:37:00Z")),
                (
                    "process-high-priority".to_string(),
                    t("2026-03-01T10:30:00Z")
                ),
                (
                    "process-medium-priority".to_string(),
                    t("2026-03-01T10:30:00Z")
                ),
                ("process-new-cves".to_string(), t("2026-03-01T10:35:00Z")),
                ("update-stats-cache".to_string(), t("2026-03-01T10:30:00Z")),
            ]
        );
        // Then back on schedule, still once per slot.
        drive(&clock, 2, Duration::from_secs(180), Duration::from_secs(1)).await;
        second.stop().await;
        third.stop().await;
        recorder.assert_no_duplicates();
        assert_eq!(
            recorder.slots_of("process-new-cves"),
            vec![
                t("2026-03-01T10:00:00Z"),
                t("2026-03-01T10:35:00Z"),
                t("2026-03-01T10:40:00Z")
            ]
        );
    }

    #[tokio::test]
    async fn a_fresh_store_does_not_fire_past_slots() {
        let clock = ManualClock::new(t("2026-03-01T10:02:00Z"));
        let recorder = Recorder::default();
        let beat = start_beat(
            &default_schedule(),
            Arc::new(MemoryBeatStore::new()),
            recorder.publisher("a"),
            &clock,
        );
        settle(&clock, 1).await;
        assert!(recorder.fired().is_empty());
        drive(&clock, 1, Duration::from_secs(180), Duration::from_secs(5)).await;
        beat.stop().await;
        assert_eq!(
            recorder.slots_of("process-new-cves"),
            vec![t("2026-03-01T10:05:00Z")]
        );
    }

    // ---------------------------------------------------------------------------
    // Intervals, disabled entries, listing

    /// A publisher that takes 4 s of (simulated) time per message, as a slow broker would.
    struct Slow {
        inner: Arc<dyn Publisher>,
        clock: ManualClock,
    }

    #[async_trait]
    impl Publisher for Slow {
        async fn publish(&self, entry: &Entry, slot: DateTime<Utc>) -> Result<String, BeatError> {
            self.clock.advance(Duration::from_secs(4));
            self.inner.publish(entry, slot).await
        }
    }

    #[tokio::test]
    async fn interval_entries_do_not_drift() {
        let start = t("2026-03-01T10:00:07Z");
        let clock = ManualClock::new(start);
        let recorder = Recorder::default();
        let publisher = Arc::new(Slow {
            inner: recorder.publisher("a"),
            clock: clock.clone(),
        });
        let beat = spawn_beat(Beat::new(
            vec![heartbeat("30s")],
            Arc::new(MemoryBeatStore::new()),
            publisher,
            Arc::new(clock.clone()),
        ));
        settle(&clock, 1).await;
        // Irregular 7 s steps plus 4 s per publish: wake-ups are always late.
        drive(
            &clock,
            1,
            Duration::from_secs(20 * 60),
            Duration::from_secs(7),
        )
        .await;
        beat.stop().await;
        let slots = recorder.slots_of("heartbeat");
        assert!(slots.len() >= 39, "{}", slots.len());
        assert_eq!(slots[0], t("2026-03-01T10:00:30Z"));
        for pair in slots.windows(2) {
            assert_eq!(pair[1] - pair[0], chrono::Duration::seconds(30), "{pair:?}");
        }
        assert!(slots.iter().all(|s| s.timestamp() % 30 == 0));
    }

    #[tokio::test]
    async fn disabled_entries_never_fire_but_are_listed() {
        let clock = ManualClock::new(t("2026-03-01T09:59:00Z"));
        let recorder = Recorder::default();
        let mut off = heartbeat("1s");
        off.name = "off".into();
        off.enabled = false;
        let entries = vec![off, heartbeat("30s")];
        let store: Arc<dyn BeatStore> = Arc::new(MemoryBeatStore::new());
        let beat = start_beat(&entries, store.clone(), recorder.publisher("a"), &clock);
        settle(&clock, 1).await;
        drive(&clock, 1, Duration::from_secs(120), Duration::from_secs(1)).await;
        beat.stop().await;
        assert!(recorder.slots_of("off").is_empty());
        assert_eq!(recorder.slots_of("heartbeat").len(), 4);

        let lister = Beat::new(
            entries,
            store,
            recorder.publisher("list"),
            Arc::new(clock.clone()),
        );
        let list = lister.list().await.unwrap();
        assert_eq!(list[0].name, "off");
        assert!(!list[0].enabled);
        assert_eq!(list[0].next_run, None);
        assert_eq!(list[1].description, "every 30 seconds");
        assert_eq!(list[1].schedule, "every 30s");
        assert_eq!(list[1].last_run, Some(t("2026-03-01T10:01:00Z")));
        assert_eq!(list[1].next_run, Some(t("2026-03-01T10:01:30Z")));
        let json = serde_json::to_value(&list[1]).unwrap();
        assert_eq!(json["task"], "backend.tasks.test_task");
    }

    #[tokio::test]
    async fn list_shows_missed_entries_as_due_now() {
        let clock = ManualClock::new(t("2026-03-01T12:00:30Z"));
        let store = Arc::new(MemoryBeatStore::new());
        store
            .claim("clean-cache", t("2026-02-27T03:00:00Z"), "old")
            .await
            .unwrap();
        let beat = Beat::new(
            default_schedule(),
            store,
            Recorder::default().publisher("x"),
            Arc::new(clock.clone()),
        );
        let list = beat.list().await.unwrap();
        let clean = list.iter().find(|e| e.name == "clean-cache").unwrap();
        assert_eq!(clean.description, "at 03:00 every day");
        assert_eq!(clean.last_run, Some(t("2026-02-27T03:00:00Z")));
        assert_eq!(clean.next_run, Some(t("2026-03-01T12:00:30Z")));
        let stats = list
            .iter()
            .find(|e| e.name == "update-stats-cache")
            .unwrap();
        assert_eq!(stats.last_run, None);
        assert_eq!(stats.next_run, Some(t("2026-03-01T12:15:00Z")));
    }

    // ---------------------------------------------------------------------------
    // Redis outage

    /// A TCP proxy in front of Redis that the test can cut and restore, to
    /// simulate a lost connection without touching the real server.
    struct Proxy {
        addr: SocketAddr,
        up: Arc<AtomicBool>,
        links: Arc<Mutex<Vec<JoinHandle<()>>>>,
    }

    impl Proxy {
        async fn start() -> Proxy {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let up = Arc::new(AtomicBool::new(true));
            let links: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
            let (up2, links2) = (up.clone(), links.clone());
            tokio::spawn(async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    if !up2.load(Ordering::SeqCst) {
                        drop(client);
                        continue;
                    }
                    let link = tokio::spawn(async move {
                        if let Ok(mut server) = TcpStream::connect(REDIS_ADDR).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    });
                    links2.lock().unwrap().push(link);
                }
            });
            Proxy { addr, up, links }
        }

        fn down(&self) {
            self.up.store(false, Ordering::SeqCst);
            for link in self.links.lock().unwrap().drain(..) {
                link.abort();
            }
        }

        fn up(&self) {
            self.up.store(true, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn redis_down_then_back_does_not_double_fire() {
        if !redis_available().await {
            return;
        }
        let proxy = Proxy::start().await;
        let prefix = RedisPrefix::new("outage");
        let clock = ManualClock::new(t("2026-03-01T09:59:50Z"));
        let recorder = Recorder::default();
        let minutely = Entry::new(
            "minutely",
            "backend.tasks.test_task",
            Schedule::Crontab(Crontab::parse("* * * * *").unwrap()),
        );
        let entries = vec![minutely, heartbeat("10s")];
        // Beat "a" goes through the proxy (and loses Redis); beat "b" talks to
        // Redis directly throughout.
        let a = start_beat(
            &entries,
            Arc::new(prefix.store(&proxy.addr.to_string())),
            recorder.publisher("a"),
            &clock,
        );
        let b = start_beat(
            &entries,
            Arc::new(prefix.store(REDIS_ADDR)),
            recorder.publisher("b"),
            &clock,
        );
        settle(&clock, 2).await;
        drive(&clock, 2, Duration::from_secs(30), Duration::from_secs(1)).await;
        assert_eq!(
            recorder.slots_of("minutely"),
            vec![t("2026-03-01T10:00:00Z")]
        );

        proxy.down();
        drive(&clock, 2, Duration::from_secs(150), Duration::from_secs(1)).await;
        // "b" kept firing alone while "a" retried.
        let during = recorder.fired();
        assert!(during.iter().any(|(_, _, who)| who == "b"));

        proxy.up();
        drive(&clock, 2, Duration::from_secs(120), Duration::from_secs(1)).await;
        a.stop().await;
        b.stop().await;
        recorder.assert_no_duplicates();
        let end = t("2026-03-01T10:04:50Z");
        let got: Vec<(String, DateTime<Utc>)> = recorder.counts().into_keys().collect();
        assert_eq!(
            got,
            expected_slots(&entries, t("2026-03-01T09:59:50Z"), end)
        );
        prefix.cleanup().await;
    }

    #[tokio::test]
    async fn redis_down_alone_fires_once_when_back() {
        if !redis_available().await {
            return;
        }
        let proxy = Proxy::start().await;
        let prefix = RedisPrefix::new("outage-alone");
        let clock = ManualClock::new(t("2026-03-01T09:59:50Z"));
        let recorder = Recorder::default();
        let every5 = Entry::new(
            "every5",
            "backend.tasks.test_task",
            Schedule::Crontab(Crontab::parse("*/5 * * * *").unwrap()),
        );
        let beat = start_beat(
            &[every5],
            Arc::new(prefix.store(&proxy.addr.to_string())),
            recorder.publisher("a"),
            &clock,
        );
        settle(&clock, 1).await;
        drive(&clock, 1, Duration::from_secs(20), Duration::from_secs(1)).await;
        assert_eq!(recorder.slots_of("every5"), vec![t("2026-03-01T10:00:00Z")]);

        // Down across three slots (10:05, 10:10, 10:15): the beat retries with
        // back-off and fires nothing.
        proxy.down();
        drive(
            &clock,
            1,
            Duration::from_secs(17 * 60),
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(recorder.slots_of("every5").len(), 1);

        // Back at ~10:17: only the latest missed slot fires, once.
        proxy.up();
        drive(&clock, 1, Duration::from_secs(120), Duration::from_secs(1)).await;
        beat.stop().await;
        recorder.assert_no_duplicates();
        assert_eq!(
            recorder.slots_of("every5"),
            vec![t("2026-03-01T10:00:00Z"), t("2026-03-01T10:15:00Z")]
        );
        prefix.cleanup().await;
    }

    // ---------------------------------------------------------------------------
    // Lost replies, failing publishers, bad configuration

    /// A store whose claims take effect but whose first `lose` replies are lost,
    /// as when Redis runs the script and the connection drops before the answer.
    #[derive(Debug)]
    struct LostReplies {
        inner: Arc<dyn BeatStore>,
        lose: Mutex<usize>,
    }

    #[async_trait]
    impl BeatStore for LostReplies {
        async fn claim(
            &self,
            entry: &str,
            slot: DateTime<Utc>,
            owner: &str,
        ) -> Result<Claim, BeatError> {
            let outcome = self.inner.claim(entry, slot, owner).await?;
            let mut lose = self.lose.lock().unwrap();
            if *lose > 0 {
                *lose -= 1;
                return Err(BeatError::Store("connection reset before the reply".into()));
            }
            Ok(outcome)
        }

        async fn last_run(&self, entry: &str) -> Result<Option<DateTime<Utc>>, BeatError> {
            self.inner.last_run(entry).await
        }
    }

    #[tokio::test]
    async fn a_claim_whose_reply_was_lost_still_fires_once() {
        let clock = ManualClock::new(t("2026-03-01T09:59:55Z"));
        let recorder = Recorder::default();
        let shared: Arc<dyn BeatStore> = Arc::new(MemoryBeatStore::new());
        let flaky: Arc<dyn BeatStore> = Arc::new(LostReplies {
            inner: shared.clone(),
            lose: Mutex::new(1),
        });
        let minutely = vec![Entry::new(
            "minutely",
            "backend.tasks.test_task",
            Schedule::Crontab(Crontab::parse("* * * * *").unwrap()),
        )];
        // "a" claims 10:00 but does not hear back; "b", starting meanwhile, sees
        // 10:00 taken; "a" retries after its back-off and learns the slot is its own.
        let a = start_beat(&minutely, flaky, recorder.publisher("a"), &clock);
        settle(&clock, 1).await;
        clock.advance(Duration::from_secs(5));
        settle(&clock, 1).await; // "a" is in back-off now.
        let b = start_beat(&minutely, shared, recorder.publisher("b"), &clock);
        settle(&clock, 2).await;
        drive(&clock, 2, Duration::from_secs(90), Duration::from_secs(1)).await;
        a.stop().await;
        b.stop().await;
        recorder.assert_no_duplicates();
        let fired = recorder.fired();
        assert_eq!(
            fired[0],
            (
                "minutely".to_string(),
                t("2026-03-01T10:00:00Z"),
                "a".to_string()
            )
        );
        assert_eq!(
            recorder.slots_of("minutely"),
            vec![t("2026-03-01T10:00:00Z"), t("2026-03-01T10:01:00Z")]
        );
    }

    /// A publisher that fails its first `fail` calls.
    struct Failing {
        inner: Arc<dyn Publisher>,
        fail: Mutex<usize>,
    }

    #[async_trait]
    impl Publisher for Failing {
        async fn publish(&self, entry: &Entry, slot: DateTime<Utc>) -> Result<String, BeatError> {
            {
                let mut fail = self.fail.lock().unwrap();
                if *fail > 0 {
                    *fail -= 1;
                    return Err(BeatError::Publish("broker unreachable".into()));
                }
            }
            self.inner.publish(entry, slot).await
        }
    }

    #[tokio::test]
    async fn publishing_is_retried_then_given_up_without_refiring() {
        let clock = ManualClock::new(t("2026-03-01T09:59:55Z"));
        let recorder = Recorder::default();
        let every5 = vec![Entry::new(
            "every5",
            "backend.tasks.test_task",
            Schedule::Crontab(Crontab::parse("*/5 * * * *").unwrap()),
        )];
        // Two failures: retried, published once.
        let publisher = Arc::new(Failing {
            inner: recorder.publisher("a"),
            fail: Mutex::new(2),
        });
        let beat = spawn_beat(Beat::new(
            every5.clone(),
            Arc::new(MemoryBeatStore::new()),
            publisher,
            Arc::new(clock.clone()),
        ));
        settle(&clock, 1).await;
        drive(&clock, 1, Duration::from_secs(60), Duration::from_secs(1)).await;
        beat.stop().await;
        assert_eq!(recorder.slots_of("every5"), vec![t("2026-03-01T10:00:00Z")]);

        // Always failing: the slot is given up (not re-fired), the next one is tried.
        let clock = ManualClock::new(t("2026-03-01T09:59:55Z"));
        let recorder = Recorder::default();
        let publisher = Arc::new(Failing {
            inner: recorder.publisher("a"),
            fail: Mutex::new(5),
        });
        let beat = spawn_beat(Beat::new(
            every5,
            Arc::new(MemoryBeatStore::new()),
            publisher,
            Arc::new(clock.clone()),
        ));
        settle(&clock, 1).await;
        drive(
            &clock,
            1,
            Duration::from_secs(6 * 60),
            Duration::from_secs(1),
        )
        .await;
        beat.stop().await;
        assert_eq!(recorder.slots_of("every5"), vec![t("2026-03-01T10:05:00Z")]);
    }

    #[tokio::test]
    async fn duplicate_entry_names_are_refused() {
        let clock = ManualClock::new(t("2026-03-01T10:00:00Z"));
        let beat = Beat::new(
            vec![heartbeat("1m"), heartbeat("5m")],
            Arc::new(MemoryBeatStore::new()),
            Recorder::default().publisher("a"),
            Arc::new(clock),
        );
        let err = beat.run(CancellationToken::new()).await.unwrap_err();
        assert!(
            matches!(err, BeatError::DuplicateEntry(ref n) if n == "heartbeat"),
            "{err}"
        );
    }
}
