//! The store's contract: every test here is written once, against
//! `Arc<dyn Store>`, and runs on SQLite (a temporary file) and on PostgreSQL
//! (a throwaway database per test) in every `cargo test`, so the two backends
//! cannot drift apart.
//!
//! PostgreSQL comes from `OPENTHREAT_TEST_PG_URL` (a maintenance database the
//! tests may create databases from), default
//! `postgres://postgres@127.0.0.1:5432/postgres`. When it is unreachable the
//! PostgreSQL half is skipped with a message — unless `CI` is set, where it
//! fails.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Duration, NaiveDate, NaiveDateTime, TimeZone, Utc};
use openthreat_core::{
    priority_class, priority_score, Cve, CveId, Cvss, CvssVersion, Enrichment, Epss, KevFacts,
    Priority, Reference, Severity, VulnStatus,
};
use openthreat_store::{
    ClaimOne, ListQuery, LlmClaim, RunOutcome, RunStatus, SortField, SortOrder, Store, StoreError,
    VulnerabilityRow, LLM_MAX_ATTEMPTS,
};

mod harness {
    use std::future::Future;
    use std::panic::AssertUnwindSafe;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use futures::FutureExt;
    use openthreat_store::{redact_url, Store};
    use sqlx::postgres::PgPoolOptions;

    /// A migrated SQLite store in a fresh temporary directory (the database
    /// file sits in a subdirectory that does not exist yet, so its creation
    /// is exercised too). Keep the `TempDir` alive for the test.
    pub async fn sqlite() -> (Arc<dyn Store>, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temporary directory");
        let url = format!("sqlite://{}", dir.path().join("data/ot.db").display());
        let store = openthreat_store::connect(&url).await.expect("open SQLite");
        store.migrate().await.expect("migrate SQLite");
        (store, dir)
    }

    fn admin_url() -> String {
        std::env::var("OPENTHREAT_TEST_PG_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
    }

    /// `url` with its database name replaced by `db`.
    fn with_database(url: &str, db: &str) -> String {
        let (base, query) = match url.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (url, None),
        };
        let authority_start = base.find("://").map(|i| i + 3).unwrap_or(0);
        let root = match base[authority_start..].find('/') {
            Some(i) => &base[..authority_start + i],
            None => base,
        };
        match query {
            Some(q) => format!("{root}/{db}?{q}"),
            None => format!("{root}/{db}"),
        }
    }

    /// Runs `test` against a migrated PostgreSQL store in its own new
    /// database, and drops that database afterwards, even when the test panics.
    pub async fn with_postgres<F, Fut>(name: &str, test: F)
    where
        F: FnOnce(Arc<dyn Store>) -> Fut,
        Fut: Future<Output = ()>,
    {
        with_postgres_url(name, |url| async move {
            let store = openthreat_store::connect(&url)
                .await
                .expect("connect to the test database");
            store.migrate().await.expect("migrate PostgreSQL");
            test(store).await;
        })
        .await;
    }

    /// Runs `test` with the URL of a new, empty PostgreSQL database (for
    /// tests that open and reopen stores themselves), and drops that
    /// database afterwards, even when the test panics.
    pub async fn with_postgres_url<F, Fut>(name: &str, test: F)
    where
        F: FnOnce(String) -> Fut,
        Fut: Future<Output = ()>,
    {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let admin_url = admin_url();
        let admin = match PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(5))
            .connect(&admin_url)
            .await
        {
            Ok(pool) => pool,
            Err(e) => {
                let msg = format!(
                    "PostgreSQL is unreachable at {} ({}); set OPENTHREAT_TEST_PG_URL to a \
                     server where the tests may create databases",
                    redact_url(&admin_url),
                    redact_url(&e.to_string())
                );
                if std::env::var_os("CI").is_some() {
                    panic!("{msg} — CI is set, so the PostgreSQL contract tests must run");
                }
                eprintln!("skipping PostgreSQL contract test {name}: {msg}");
                return;
            }
        };
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let db = format!(
            "ot_test_{}_{}_{}",
            std::process::id(),
            nanos,
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        sqlx::query(&format!("CREATE DATABASE \"{db}\""))
            .execute(&admin)
            .await
            .expect("create test database");
        let result = AssertUnwindSafe(test(with_database(&admin_url, &db)))
            .catch_unwind()
            .await;
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"))
            .execute(&admin)
            .await;
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
    }

    #[test]
    fn database_name_is_replaced() {
        assert_eq!(
            with_database("postgres://u:p@h:5432/postgres?sslmode=disable", "x"),
            "postgres://u:p@h:5432/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h", "x"), "postgres://h/x");
    }
}

/// Instantiates each contract test once per backend.
macro_rules! contract_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let (store, _dir) = crate::harness::sqlite().await;
                    crate::$name(store).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    crate::harness::with_postgres(stringify!($name), crate::$name).await;
                }
            )*
        }
    };
}

/// Instantiates each test that opens (and reopens) stores itself, from a
/// database URL, once per backend: a fresh SQLite file, a new PostgreSQL
/// database.
macro_rules! url_contract_tests {
    ($($name:ident),* $(,)?) => {
        mod by_url {
            mod sqlite {
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        let dir = tempfile::tempdir().unwrap();
                        let url = format!("sqlite://{}", dir.path().join("ot.db").display());
                        crate::$name(url).await;
                    }
                )*
            }
            mod postgres {
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        crate::harness::with_postgres_url(stringify!($name), crate::$name).await;
                    }
                )*
            }
        }
    };
}

url_contract_tests!(
    the_smallest_pool_does_every_kind_of_work_within_its_size,
    a_bulk_load_killed_half_way_is_completed_by_the_next_start,
    a_bulk_load_killed_after_search_indexing_is_completed_by_the_next_start,
    a_start_during_a_bulk_load_leaves_the_indexes_to_it,
);

contract_tests!(
    migrate_twice_is_a_no_op,
    insert_then_get_returns_every_field,
    reimport_changes_nothing_and_keeps_llm_fields,
    changed_description_marks_llm_result_stale,
    older_record_never_overwrites_newer,
    batches_land_together_or_not_at_all,
    invalid_records_are_rejected_and_the_rest_kept,
    each_filter_selects_the_right_rows,
    sort_whitelist_in_both_orders_with_nulls_last,
    pagination_reports_totals,
    summary_listings_leave_out_the_wide_lists,
    stats_count_what_is_stored,
    kev_before_and_after_the_nvd_record,
    epss_update_changes_priority,
    recompute_priorities_follows_time,
    ingestion_runs_are_recorded,
    runs_of_killed_processes_are_closed,
    heartbeats_never_wait_for_a_file_import,
    sync_state_round_trips,
    cache_entries_are_cleaned_by_age,
    sql_injection_in_filters_changes_nothing,
    suggestions_by_id_and_title,
    full_text_search_finds_words_in_every_field,
    full_text_search_combines_with_every_filter,
    relevance_puts_id_and_title_hits_first,
    query_syntax_in_q_is_plain_text,
    updated_cves_are_searched_by_their_new_words,
    a_bulk_load_is_searchable_and_stays_updatable,
    a_bulk_load_answers_like_a_normal_one,
    search_index_catches_up_once,
    llm_bookkeeping,
    concurrent_llm_batch_claims_never_overlap,
    llm_batch_claim_order_and_exclusions,
    llm_claim_expires_and_can_be_released,
    llm_batch_claim_created_after,
    llm_claim_one_outcomes,
    llm_failures_park_and_enrichment_resets,
    llm_stats_numbers,
);

// ---------------------------------------------------------------- fixtures

/// "Now" for most tests: 2025-03-01 00:00 UTC.
fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 3, 1, 0, 0, 0).unwrap()
}

fn at(s: &str) -> DateTime<Utc> {
    NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.3f")
        .unwrap()
        .and_utc()
}

fn day(s: &str) -> NaiveDate {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
}

fn id(s: &str) -> CveId {
    CveId::parse(s).unwrap()
}

struct Fx {
    id: &'static str,
    published: &'static str,
    modified: &'static str,
    status: &'static str,
    description: &'static str,
    cvss: Option<(f64, &'static str, CvssVersion)>,
    cwe: &'static [&'static str],
    vendors: &'static [&'static str],
    products: &'static [&'static str],
    kev: Option<(&'static str, &'static str, &'static str)>,
}

fn build(f: Fx) -> Cve {
    let cve_id = id(f.id);
    let mut c = Cve::new(cve_id.clone(), f.description, at(f.published));
    c.modified_at = at(f.modified);
    c.vuln_status = VulnStatus::parse(f.status);
    if let Some((score, vector, version)) = f.cvss {
        c.cvss = Some(Cvss {
            score,
            vector: vector.into(),
            version,
        });
        c.severity = if version == CvssVersion::V2 {
            Severity::from_v2_score(score)
        } else {
            Severity::from_v3_score(score)
        };
    }
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    c.cwe_ids = strings(f.cwe);
    c.vendors = strings(f.vendors);
    c.products = strings(f.products);
    c.affected_products = f
        .vendors
        .iter()
        .zip(f.products)
        .map(|(v, p)| format!("{v}:{p}"))
        .collect();
    c.references = vec![Reference {
        url: format!("https://nvd.nist.gov/vuln/detail/{}", f.id),
        source: Some("nvd@nist.gov".into()),
        tags: vec!["Third Party Advisory".into()],
    }];
    c.sources = vec!["nvd".into()];
    c.kev = f.kev.map(|(added, due, name)| KevFacts {
        date_added: Some(day(added)),
        due_date: Some(day(due)),
        required_action: Some("Apply mitigations per vendor instructions.".into()),
        ransomware_use: None,
        vulnerability_name: Some(name.into()),
    });
    c
}

/// Nine real CVEs (facts from ../shared/data/nvd/cve): eight listed, one Rejected.
fn fixtures() -> Vec<Cve> {
    vec![
        build(Fx {
            id: "CVE-2024-3400",
            published: "2024-04-12T08:15:06.230",
            modified: "2024-04-13T01:00:01.407",
            status: "Awaiting Analysis",
            description: "A command injection vulnerability in the GlobalProtect feature of Palo Alto Networks PAN-OS software for specific PAN-OS versions and distinct feature configurations may enable an unauthenticated attacker to execute arbitrary code with root privileges on the firewall.",
            cvss: Some((10.0, "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:C/C:H/I:H/A:H", CvssVersion::V31)),
            cwe: &["CWE-77"],
            vendors: &["paloaltonetworks"],
            products: &["pan-os"],
            kev: Some(("2024-04-12", "2024-04-19", "Palo Alto Networks PAN-OS Command Injection Vulnerability")),
        }),
        build(Fx {
            id: "CVE-2014-0160",
            published: "2014-04-07T22:55:03.893",
            modified: "2025-10-21T20:16:09.947",
            status: "Deferred",
            description: "The (1) TLS and (2) DTLS implementations in OpenSSL 1.0.1 before 1.0.1g do not properly handle Heartbeat Extension packets, which allows remote attackers to obtain sensitive information from process memory.",
            cvss: Some((7.5, "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:N/A:N", CvssVersion::V31)),
            cwe: &["CWE-125"],
            vendors: &["openssl", "filezilla-project"],
            products: &["openssl", "filezilla_server"],
            kev: Some(("2022-05-04", "2022-05-25", "OpenSSL Information Disclosure Vulnerability")),
        }),
        build(Fx {
            id: "CVE-2019-0708",
            published: "2019-05-16T19:29:00.427",
            modified: "2025-10-21T20:17:21.443",
            status: "Modified",
            description: "A remote code execution vulnerability exists in Remote Desktop Services formerly known as Terminal Services when an unauthenticated attacker connects to the target system using RDP and sends specially crafted requests.",
            cvss: Some((9.8, "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H", CvssVersion::V31)),
            cwe: &["CWE-416"],
            vendors: &["Microsoft", "microsoft"],
            products: &["windows_7", "windows_server_2008"],
            kev: Some(("2021-11-03", "2022-05-03", "Microsoft Remote Desktop Services Remote Code Execution Vulnerability")),
        }),
        build(Fx {
            id: "CVE-2024-6387",
            published: "2024-07-01T13:15:06.467",
            modified: "2024-07-09T06:15:03.513",
            status: "Modified",
            description: "A security regression (CVE-2006-5051) was discovered in OpenSSH's server (sshd). There is a race condition which can lead sshd to handle some signals in an unsafe manner.",
            cvss: Some((8.1, "CVSS:3.1/AV:N/AC:H/PR:N/UI:N/S:U/C:H/I:H/A:H", CvssVersion::V31)),
            cwe: &["CWE-362", "CWE-364"],
            vendors: &["openbsd"],
            products: &["openssh"],
            kev: None,
        }),
        build(Fx {
            id: "CVE-2024-0158",
            published: "2024-07-02T07:15:02.370",
            modified: "2024-07-31T20:37:32.247",
            status: "Analyzed",
            description: "Dell BIOS contains an improper input validation vulnerability. A local authenticated malicious user with admin privileges could potentially exploit this vulnerability, leading to arbitrary code execution.",
            cvss: Some((6.7, "CVSS:3.1/AV:L/AC:L/PR:H/UI:N/S:U/C:H/I:H/A:H", CvssVersion::V31)),
            cwe: &["CWE-20"],
            vendors: &["dell", "dell"],
            products: &["alienware_m15_r6_firmware", "alienware_m15_r6"],
            kev: None,
        }),
        build(Fx {
            id: "CVE-1999-0001",
            published: "1999-12-30T05:00:00.000",
            modified: "2024-11-20T23:27:31.207",
            status: "Modified",
            description: "ip_input.c in BSD-derived TCP/IP implementations allows remote attackers to cause a denial of service (crash or hang) via crafted packets.",
            cvss: Some((5.0, "AV:N/AC:L/Au:N/C:N/I:N/A:P", CvssVersion::V2)),
            cwe: &["CWE-20"],
            vendors: &["bsdi", "freebsd"],
            products: &["bsd_os", "freebsd"],
            kev: None,
        }),
        build(Fx {
            id: "CVE-2025-0938",
            published: "2025-01-31T18:15:38.053",
            modified: "2025-01-31T20:15:33.083",
            status: "Received",
            description: "The Python standard library functions `urllib.parse.urlsplit` and `urlparse` accepted domain names that included square brackets which isn't valid according to RFC 3986.",
            cvss: Some((6.3, "CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:N/VC:N/VI:L/VA:N/SC:N/SI:N/SA:N", CvssVersion::V40)),
            cwe: &["CWE-20"],
            vendors: &[],
            products: &[],
            kev: None,
        }),
        build(Fx {
            id: "CVE-2022-49267",
            published: "2025-02-26T07:01:03.620",
            modified: "2025-02-26T07:01:03.620",
            status: "Received",
            description: "In the Linux kernel, the following vulnerability has been resolved: mmc: core: use sysfs_emit() instead of sprintf().",
            cvss: None,
            cwe: &[],
            vendors: &[],
            products: &[],
            kev: None,
        }),
        build(Fx {
            id: "CVE-2023-5129",
            published: "2023-09-25T21:15:16.667",
            modified: "2023-09-27T21:15:11.940",
            status: "Rejected",
            description: "** REJECT ** This CVE ID has been rejected or withdrawn by its CVE Numbering Authority. Duplicate of CVE-2023-4863.",
            cvss: None,
            cwe: &[],
            vendors: &[],
            products: &[],
            kev: None,
        }),
    ]
}

fn fixture(cve_id: &str) -> Cve {
    fixtures()
        .into_iter()
        .find(|c| c.cve_id.as_str() == cve_id)
        .unwrap()
}

async fn seed(s: &Arc<dyn Store>) {
    let summary = s.upsert_cves(&fixtures(), now()).await.unwrap();
    assert_eq!(summary.inserted, 9, "{summary:?}");
    assert!(summary.failed.is_empty(), "{summary:?}");
}

async fn get(s: &Arc<dyn Store>, cve_id: &str) -> VulnerabilityRow {
    s.get_cve(&id(cve_id))
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("{cve_id} is stored"))
}

async fn ids(s: &Arc<dyn Store>, q: ListQuery) -> Vec<String> {
    let page = s.list_cves(&q).await.unwrap();
    page.items.into_iter().map(|r| r.cve_id).collect()
}

fn all() -> ListQuery {
    ListQuery {
        page_size: 100,
        sort: SortField::CveId,
        order: SortOrder::Asc,
        ..ListQuery::default()
    }
}

fn enrichment(at: DateTime<Utc>) -> Enrichment {
    Enrichment {
        simple_title: "Firewall takeover through GlobalProtect".into(),
        simple_description:
            "Attackers can run commands on the firewall without logging in. Patch now.".into(),
        recommended_action: Some("Upgrade PAN-OS to a fixed release.".into()),
        model: "llama3.2:3b".into(),
        processed_at: at,
        input_hash: "abc123".into(),
    }
}

// ------------------------------------------------------------------- tests

async fn migrate_twice_is_a_no_op(s: Arc<dyn Store>) {
    seed(&s).await;
    s.migrate().await.unwrap();
    s.migrate().await.unwrap();
    s.ping().await.unwrap();
    assert_eq!(s.list_cves(&all()).await.unwrap().total, 8);
}

async fn insert_then_get_returns_every_field(s: Arc<dyn Store>) {
    seed(&s).await;
    let r = get(&s, "CVE-2024-3400").await;
    let c = fixture("CVE-2024-3400");
    assert!(r.id > 0);
    assert_eq!(r.cve_id, "CVE-2024-3400");
    assert_eq!(r.title, c.title);
    assert_eq!(r.description, c.description);
    assert_eq!(r.cvss_score, Some(10.0));
    assert_eq!(
        r.cvss_vector.as_deref(),
        Some("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:C/C:H/I:H/A:H")
    );
    assert_eq!(r.cvss_version.as_deref(), Some("3.1"));
    assert_eq!(r.severity, Severity::Critical);
    assert_eq!(r.published_at, at("2024-04-12T08:15:06.230"));
    assert_eq!(r.modified_at, at("2024-04-13T01:00:01.407"));
    assert_eq!(r.vuln_status, "Awaiting Analysis");
    assert!(r.exploited_in_the_wild);
    assert_eq!(r.kev_date_added, Some(day("2024-04-12")));
    assert_eq!(r.cisa_due_date, Some(day("2024-04-19")));
    assert_eq!(
        r.kev_vulnerability_name.as_deref(),
        Some("Palo Alto Networks PAN-OS Command Injection Vulnerability")
    );
    assert_eq!(r.cwe_ids, vec!["CWE-77"]);
    assert_eq!(r.vendors, vec!["paloaltonetworks"]);
    assert_eq!(r.products, vec!["pan-os"]);
    assert_eq!(r.affected_products, vec!["paloaltonetworks:pan-os"]);
    assert_eq!(r.references, c.references);
    assert_eq!(r.sources, vec!["nvd", "kev"]);
    assert_eq!(r.priority_score, priority_score(&c, now()));
    assert_eq!(r.priority, Priority::High);
    assert_eq!(r.epss_score, None);
    assert!(!r.llm_processed);
    assert_eq!(r.simple_title, None);
    assert_eq!(r.llm_attempts, 0);
    assert_eq!(r.created_at, now());
    assert_eq!(r.updated_at, now());
    // The stored record converts back to the domain type it came from.
    let back = r.to_cve().unwrap();
    assert_eq!(back.cve_id, c.cve_id);
    assert_eq!(back.cvss, c.cvss);
    assert_eq!(back.kev, c.kev);

    // Duplicated and differently cased vendors are normalised.
    let bluekeep = get(&s, "CVE-2019-0708").await;
    assert_eq!(bluekeep.vendors, vec!["microsoft"]);
    assert_eq!(get(&s, "CVE-1999-0001").await.severity, Severity::Medium);
    assert_eq!(get(&s, "CVE-2022-49267").await.cvss_score, None);
    assert_eq!(get(&s, "CVE-2022-49267").await.severity, Severity::Unknown);
    assert!(s.get_cve(&id("CVE-2000-0001")).await.unwrap().is_none());
    // The detail shape serialises with the API's field names.
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["cve_id"], "CVE-2024-3400");
    assert_eq!(json["severity"], "CRITICAL");
    assert_eq!(json["priority"], "high");
    assert_eq!(json["cisa_due_date"], "2024-04-19");
    assert!(json.get("llm_input_hash").is_none());
}

async fn reimport_changes_nothing_and_keeps_llm_fields(s: Arc<dyn Store>) {
    seed(&s).await;
    s.save_enrichment(&id("CVE-2024-3400"), &enrichment(now()))
        .await
        .unwrap();
    let before = get(&s, "CVE-2024-3400").await;
    let later = now() + Duration::days(3);
    let summary = s.upsert_cves(&fixtures(), later).await.unwrap();
    assert_eq!(summary.unchanged, 9, "{summary:?}");
    assert_eq!(
        (summary.inserted, summary.updated, summary.skipped_older),
        (0, 0, 0)
    );
    let after = get(&s, "CVE-2024-3400").await;
    assert_eq!(after, before, "a re-import must not touch the row");
    assert_eq!(after.updated_at, now());
    assert!(after.llm_processed);
    assert_eq!(
        after.simple_title.as_deref(),
        Some("Firewall takeover through GlobalProtect")
    );
    assert_eq!(after.llm_model.as_deref(), Some("llama3.2:3b"));
}

async fn changed_description_marks_llm_result_stale(s: Arc<dyn Store>) {
    seed(&s).await;
    for cve_id in ["CVE-2024-3400", "CVE-2024-6387"] {
        s.save_enrichment(&id(cve_id), &enrichment(now()))
            .await
            .unwrap();
    }
    let later = now() + Duration::hours(1);
    // New description: the LLM text is stale but kept until re-enriched.
    let mut pan = fixture("CVE-2024-3400");
    pan.description
        .push_str(" Cloud NGFW, Panorama appliances and Prisma Access are not impacted.");
    pan.modified_at = at("2024-04-20T10:00:00.000");
    // Same description, new score: the LLM text stays valid.
    let mut ssh = fixture("CVE-2024-6387");
    ssh.cvss.as_mut().unwrap().score = 8.2;
    ssh.modified_at = at("2024-08-01T00:00:00.000");
    let summary = s.upsert_cves(&[pan.clone(), ssh], later).await.unwrap();
    assert_eq!(summary.updated, 2, "{summary:?}");

    let r = get(&s, "CVE-2024-3400").await;
    assert_eq!(r.description, pan.description);
    assert!(!r.llm_processed);
    assert_eq!(
        r.simple_title.as_deref(),
        Some("Firewall takeover through GlobalProtect")
    );
    assert_eq!(r.updated_at, later);
    assert_eq!(r.created_at, now());
    assert_eq!(r.modified_at, at("2024-04-20T10:00:00.000"));

    let r = get(&s, "CVE-2024-6387").await;
    assert_eq!(r.cvss_score, Some(8.2));
    assert!(r.llm_processed);
}

/// Two copies of CVE-2024-6387: "newer text" modified on 2024-07-09 and
/// "older text" modified a week before.
fn newer_and_older() -> (Cve, Cve) {
    let mut newer = fixture("CVE-2024-6387");
    newer.description = "newer text".into();
    newer.modified_at = at("2024-07-09T06:15:03.513");
    let mut older = newer.clone();
    older.description = "older text".into();
    older.modified_at = at("2024-07-02T00:00:00.000");
    (newer, older)
}

async fn older_record_never_overwrites_newer(s: Arc<dyn Store>) {
    let (newer, older) = newer_and_older();
    // Newer stored first, older arrives later: ignored.
    s.upsert_cves(std::slice::from_ref(&newer), now())
        .await
        .unwrap();
    let summary = s
        .upsert_cves(std::slice::from_ref(&older), now())
        .await
        .unwrap();
    assert_eq!(summary.skipped_older, 1, "{summary:?}");
    assert_eq!(get(&s, "CVE-2024-6387").await.description, "newer text");

    // Older stored first, newer arrives: applied.
    let mut old2 = older.clone();
    old2.cve_id = id("CVE-2024-0158");
    let mut new2 = newer.clone();
    new2.cve_id = id("CVE-2024-0158");
    s.upsert_cves(&[old2.clone()], now()).await.unwrap();
    let summary = s.upsert_cves(&[new2.clone()], now()).await.unwrap();
    assert_eq!(summary.updated, 1, "{summary:?}");
    assert_eq!(get(&s, "CVE-2024-0158").await.description, "newer text");

    // Both in one batch, in either order: the newer wins.
    for (i, batch) in [
        vec![older.clone(), newer.clone()],
        vec![newer.clone(), older.clone()],
    ]
    .into_iter()
    .enumerate()
    {
        let cve_id = id(&format!("CVE-2030-000{i}"));
        let batch: Vec<Cve> = batch
            .into_iter()
            .map(|mut c| {
                c.cve_id = cve_id.clone();
                c
            })
            .collect();
        s.upsert_cves(&batch, now()).await.unwrap();
        assert_eq!(
            get(&s, cve_id.as_str()).await.description,
            "newer text",
            "batch order {i}"
        );
    }
}

/// What a file import relies on: batches in one transaction are invisible
/// until the commit, gone after a drop, and a later batch sees an earlier
/// one (an older copy in the same file does not overwrite a newer one).
async fn batches_land_together_or_not_at_all(s: Arc<dyn Store>) {
    let all = fixtures();
    let (first, second) = all.split_at(all.len() / 2);
    let stored = |s: Arc<dyn Store>, cves: Vec<Cve>| async move {
        let mut n = 0;
        for c in &cves {
            n += usize::from(s.get_cve(&c.cve_id).await.unwrap().is_some());
        }
        n
    };

    let mut batches = s.begin_upserts().await.unwrap();
    let a = batches.upsert_cves(first, now()).await.unwrap();
    assert_eq!(a.inserted, first.len() as u64, "{a:?}");
    let b = batches.upsert_cves(second, now()).await.unwrap();
    assert_eq!(b.inserted, second.len() as u64, "{b:?}");
    drop(batches);
    assert_eq!(
        stored(s.clone(), all.clone()).await,
        0,
        "a dropped transaction keeps nothing"
    );

    let (newer, older) = newer_and_older();
    let mut batches = s.begin_upserts().await.unwrap();
    batches.upsert_cves(first, now()).await.unwrap();
    batches
        .upsert_cves(std::slice::from_ref(&newer), now())
        .await
        .unwrap();
    let late = batches
        .upsert_cves(std::slice::from_ref(&older), now())
        .await
        .unwrap();
    assert_eq!(late.skipped_older, 1, "{late:?}");
    // A reader meanwhile (another connection) sees nothing yet.
    assert_eq!(
        stored(s.clone(), all.clone()).await,
        0,
        "uncommitted rows are invisible"
    );
    batches.commit().await.unwrap();
    assert_eq!(stored(s.clone(), first.to_vec()).await, first.len());
    assert_eq!(get(&s, "CVE-2024-6387").await.description, "newer text");
    // Searchable like any other write.
    assert_eq!(search(&s, "newer").await, vec!["CVE-2024-6387".to_string()]);
}

async fn invalid_records_are_rejected_and_the_rest_kept(s: Arc<dyn Store>) {
    let mut records: Vec<serde_json::Value> = fixtures()
        .iter()
        .take(3)
        .map(|c| serde_json::to_value(c).unwrap())
        .collect();
    let mut bad = records[0].clone();
    bad["cve_id"] = "CVE-2024-12a4".into();
    records.insert(1, bad);
    let summary = s.upsert_raw(&records, now()).await.unwrap();
    assert_eq!(summary.inserted, 3, "{summary:?}");
    assert_eq!(summary.failed.len(), 1, "{summary:?}");
    assert_eq!(summary.failed[0].0, "CVE-2024-12a4");
    assert!(
        summary.failed[0].1.contains("invalid CVE id"),
        "{summary:?}"
    );
    assert!(summary.failed[0].1.contains("CVE-2024-12a4"), "{summary:?}");

    // Values the database cannot hold are rejected per record as well.
    let mut absurd = fixture("CVE-2024-6387");
    absurd.cvss.as_mut().unwrap().score = 42.0;
    let mut nul = fixture("CVE-2024-0158");
    nul.description = "bad\0byte".into();
    let ok = fixture("CVE-1999-0001");
    let summary = s.upsert_cves(&[absurd, nul, ok], now()).await.unwrap();
    assert_eq!(summary.inserted, 1, "{summary:?}");
    let failed: Vec<&str> = summary.failed.iter().map(|(i, _)| i.as_str()).collect();
    assert_eq!(failed, vec!["CVE-2024-6387", "CVE-2024-0158"]);
    assert!(s.get_cve(&id("CVE-2024-6387")).await.unwrap().is_none());
    assert_eq!(s.list_cves(&all()).await.unwrap().total, 4);
}

async fn each_filter_selects_the_right_rows(s: Arc<dyn Store>) {
    seed(&s).await;
    let q = |f: fn(&mut ListQuery)| {
        let mut q = all();
        f(&mut q);
        q
    };
    assert_eq!(
        ids(&s, all()).await,
        [
            "CVE-1999-0001",
            "CVE-2014-0160",
            "CVE-2019-0708",
            "CVE-2022-49267",
            "CVE-2024-0158",
            "CVE-2024-3400",
            "CVE-2024-6387",
            "CVE-2025-0938"
        ],
        "Rejected records are hidden by default"
    );
    assert_eq!(ids(&s, q(|q| q.include_rejected = true)).await.len(), 9);
    assert_eq!(
        ids(&s, q(|q| q.severity = Some(Severity::Critical))).await,
        ["CVE-2019-0708", "CVE-2024-3400"]
    );
    assert_eq!(
        ids(&s, q(|q| q.exploited = Some(true))).await,
        ["CVE-2014-0160", "CVE-2019-0708", "CVE-2024-3400"]
    );
    assert_eq!(ids(&s, q(|q| q.exploited = Some(false))).await.len(), 5);
    assert_eq!(
        ids(&s, q(|q| q.vendor = Some("Microsoft".into()))).await,
        ["CVE-2019-0708"]
    );
    assert_eq!(
        ids(&s, q(|q| q.vendor = Some("freebsd".into()))).await,
        ["CVE-1999-0001"]
    );
    assert_eq!(
        ids(&s, q(|q| q.product = Some("OpenSSH".into()))).await,
        ["CVE-2024-6387"]
    );
    assert_eq!(
        ids(&s, q(|q| q.product = Some("openssl".into()))).await,
        ["CVE-2014-0160"]
    );
    assert_eq!(
        ids(&s, q(|q| q.cwe = Some("cwe-20".into()))).await,
        ["CVE-1999-0001", "CVE-2024-0158", "CVE-2025-0938"]
    );
    assert_eq!(
        ids(&s, q(|q| q.cwe = Some("CWE-364".into()))).await,
        ["CVE-2024-6387"]
    );
    assert_eq!(
        ids(
            &s,
            q(|q| {
                q.min_cvss = Some(7.0);
                q.max_cvss = Some(9.0);
            })
        )
        .await,
        ["CVE-2014-0160", "CVE-2024-6387"]
    );
    assert_eq!(
        ids(&s, q(|q| q.min_cvss = Some(9.8))).await,
        ["CVE-2019-0708", "CVE-2024-3400"]
    );
    assert_eq!(
        ids(
            &s,
            q(|q| {
                q.published_after = Some(day("2024-07-01"));
                q.published_before = Some(day("2024-07-02"));
            })
        )
        .await,
        ["CVE-2024-0158", "CVE-2024-6387"],
        "both ends inclusive"
    );
    assert_eq!(
        ids(&s, q(|q| q.published_before = Some(day("2014-04-07")))).await,
        ["CVE-1999-0001", "CVE-2014-0160"]
    );
    assert_eq!(
        ids(&s, all().published_within_days(30, now())).await,
        ["CVE-2022-49267", "CVE-2025-0938"]
    );
    assert_eq!(
        ids(&s, q(|q| q.priority = Some(Priority::High))).await,
        [
            "CVE-2014-0160",
            "CVE-2019-0708",
            "CVE-2022-49267",
            "CVE-2024-3400"
        ]
    );
    assert_eq!(
        ids(&s, q(|q| q.priority = Some(Priority::Medium))).await,
        ["CVE-2024-6387", "CVE-2025-0938"]
    );
    s.save_enrichment(&id("CVE-2024-0158"), &enrichment(now()))
        .await
        .unwrap();
    assert_eq!(
        ids(&s, q(|q| q.llm_processed = Some(true))).await,
        ["CVE-2024-0158"]
    );
    assert_eq!(
        ids(&s, q(|q| q.q = Some("openssh".into()))).await,
        ["CVE-2024-6387"]
    );
    assert_eq!(
        ids(&s, q(|q| q.q = Some("cve-2019-0708".into()))).await,
        ["CVE-2019-0708"]
    );
    // Full-text search matches whole words: a partial id is what
    // suggest() is for.
    assert!(ids(&s, q(|q| q.q = Some("cve-2019-07".into())))
        .await
        .is_empty());
    // Filters combine with AND.
    assert_eq!(
        ids(
            &s,
            q(|q| {
                q.exploited = Some(true);
                q.severity = Some(Severity::High);
                q.cwe = Some("CWE-125".into());
            })
        )
        .await,
        ["CVE-2014-0160"]
    );
    assert!(ids(
        &s,
        q(|q| {
            q.exploited = Some(true);
            q.vendor = Some("dell".into());
        })
    )
    .await
    .is_empty());
    // Out-of-range values are refused, not silently clamped.
    let err = s
        .list_cves(&q(|q| q.max_cvss = Some(11.0)))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidInput(_)), "{err}");
    assert!(err.to_string().contains("max_cvss"));
}

async fn sort_whitelist_in_both_orders_with_nulls_last(s: Arc<dyn Store>) {
    seed(&s).await;
    let epss = |score: f64| Epss {
        score,
        percentile: Some(0.5),
        date: Some(day("2025-02-28")),
    };
    s.apply_epss(
        &[
            (id("CVE-2024-3400"), epss(0.94)),
            (id("CVE-1999-0001"), epss(0.02)),
            (id("CVE-2024-6387"), epss(0.4)),
        ],
        now(),
    )
    .await
    .unwrap();
    for field in SortField::ALL {
        for order in [SortOrder::Asc, SortOrder::Desc] {
            let page = s
                .list_cves(&ListQuery {
                    page_size: 100,
                    sort: field,
                    order,
                    ..ListQuery::default()
                })
                .await
                .unwrap();
            assert_eq!(page.items.len(), 8);
            let keys: Vec<Option<String>> = page
                .items
                .iter()
                .map(|r| match field {
                    // Without a q, relevance is the priority order.
                    SortField::PriorityScore | SortField::Relevance => {
                        Some(format!("{:09.4}", r.priority_score))
                    }
                    SortField::CvssScore => r.cvss_score.map(|v| format!("{v:09.4}")),
                    SortField::EpssScore => r.epss_score.map(|v| format!("{v:09.4}")),
                    SortField::PublishedAt => Some(r.published_at.to_rfc3339()),
                    SortField::ModifiedAt => Some(r.modified_at.to_rfc3339()),
                    SortField::CveId => Some(r.cve_id.clone()),
                })
                .collect();
            let present: Vec<&String> = keys.iter().flatten().collect();
            assert!(
                keys[..present.len()].iter().all(Option::is_some),
                "{field} {order:?}: NULLs must come last: {keys:?}"
            );
            let mut sorted = present.clone();
            sorted.sort();
            if order == SortOrder::Desc {
                sorted.reverse();
            }
            assert_eq!(present, sorted, "{field} {order:?}");
        }
    }
    let first = |field, order| {
        let s = s.clone();
        async move {
            ids(
                &s,
                ListQuery {
                    page_size: 100,
                    sort: field,
                    order,
                    ..ListQuery::default()
                },
            )
            .await
        }
    };
    let cvss_desc = first(SortField::CvssScore, SortOrder::Desc).await;
    assert_eq!(cvss_desc[0], "CVE-2024-3400");
    assert_eq!(cvss_desc[7], "CVE-2022-49267", "no CVSS: last");
    let cvss_asc = first(SortField::CvssScore, SortOrder::Asc).await;
    assert_eq!(cvss_asc[0], "CVE-1999-0001");
    assert_eq!(
        cvss_asc[7], "CVE-2022-49267",
        "no CVSS: last in ascending order too"
    );
    let epss_asc = first(SortField::EpssScore, SortOrder::Asc).await;
    assert_eq!(
        &epss_asc[..3],
        ["CVE-1999-0001", "CVE-2024-6387", "CVE-2024-3400"]
    );
    let epss_desc = first(SortField::EpssScore, SortOrder::Desc).await;
    assert_eq!(
        &epss_desc[..3],
        ["CVE-2024-3400", "CVE-2024-6387", "CVE-1999-0001"]
    );
    assert_eq!(
        first(SortField::PublishedAt, SortOrder::Desc).await[0],
        "CVE-2022-49267"
    );
    assert_eq!(
        first(SortField::CveId, SortOrder::Asc).await[0],
        "CVE-1999-0001"
    );
    // The default listing is by priority score, highest first.
    let default = ids(&s, ListQuery::default()).await;
    assert_eq!(default[0], "CVE-2024-3400");
    assert_eq!("severity".parse::<SortField>().unwrap_err().to_string(),
        "invalid sort_by \"severity\": allowed values are priority_score, cvss_score, published_at, modified_at, cve_id, epss_score, relevance");
}

async fn pagination_reports_totals(s: Arc<dyn Store>) {
    seed(&s).await;
    let mut seen = Vec::new();
    for page in 1..=3 {
        let p = s
            .list_cves(&ListQuery {
                page,
                page_size: 3,
                ..all()
            })
            .await
            .unwrap();
        assert_eq!(
            (p.total, p.total_pages, p.page, p.page_size),
            (8, 3, page, 3)
        );
        assert_eq!(p.items.len(), if page < 3 { 3 } else { 2 });
        seen.extend(p.items.into_iter().map(|r| r.cve_id));
    }
    assert_eq!(seen, ids(&s, all()).await);
    let beyond = s
        .list_cves(&ListQuery {
            page: 4,
            page_size: 3,
            ..all()
        })
        .await
        .unwrap();
    assert!(beyond.items.is_empty());
    assert_eq!(beyond.total, 8);
    let none = s
        .list_cves(&ListQuery {
            vendor: Some("nobody".into()),
            ..all()
        })
        .await
        .unwrap();
    assert_eq!((none.total, none.total_pages), (0, 0));
    for bad in [
        ListQuery { page: 0, ..all() },
        ListQuery {
            page_size: 0,
            ..all()
        },
        ListQuery {
            page_size: 1001,
            ..all()
        },
    ] {
        assert!(matches!(
            s.list_cves(&bad).await,
            Err(StoreError::InvalidInput(_))
        ));
    }
}

/// A summary listing (the API's list pages) returns the same rows with
/// every listed field, only without the wide lists; full ones keep them.
async fn summary_listings_leave_out_the_wide_lists(s: Arc<dyn Store>) {
    seed(&s).await;
    for q in [
        all(),
        ListQuery {
            q: Some("remote".into()),
            ..all()
        },
        ListQuery {
            q: Some("remote".into()),
            sort: SortField::Relevance,
            ..all()
        },
    ] {
        let full = s.list_cves(&q).await.unwrap();
        let lean = s
            .list_cves(&ListQuery {
                summary: true,
                ..q.clone()
            })
            .await
            .unwrap();
        assert_eq!(lean.total, full.total, "{q:?}");
        assert!(!full.items.is_empty());
        assert!(full
            .items
            .iter()
            .any(|r| !r.references.is_empty() && !r.affected_products.is_empty()));
        assert_eq!(lean.items.len(), full.items.len());
        for (l, f) in lean.items.iter().zip(&full.items) {
            let expected = VulnerabilityRow {
                cwe_ids: vec![],
                affected_products: vec![],
                vendors: vec![],
                products: vec![],
                references: vec![],
                source_tags: vec![],
                ..f.clone()
            };
            assert_eq!(l, &expected, "{q:?}");
        }
    }
}

async fn stats_count_what_is_stored(s: Arc<dyn Store>) {
    let empty = s.stats(now()).await.unwrap();
    assert_eq!(empty.total_vulnerabilities, 0);
    assert_eq!(empty.last_update, None);
    assert_eq!(empty.llm.completion_percentage, 0.0);

    seed(&s).await;
    s.save_enrichment(&id("CVE-2024-3400"), &enrichment(now()))
        .await
        .unwrap();
    s.save_enrichment(&id("CVE-2024-0158"), &enrichment(now()))
        .await
        .unwrap();
    // At 2025-02-26 12:00 only CVE-2022-49267 was modified in the last 24 h
    // (two fixtures carry modification dates after that moment: not counted).
    let t = at("2025-02-26T12:00:00.000");
    let st = s.stats(t).await.unwrap();
    assert_eq!(
        st.total_vulnerabilities, 8,
        "Rejected records are not counted"
    );
    assert_eq!(st.exploited_vulnerabilities, 3);
    assert_eq!(st.critical_vulnerabilities, 2);
    assert_eq!(st.high_vulnerabilities, 2);
    let expected: BTreeMap<String, u64> = [
        ("CRITICAL", 2),
        ("HIGH", 2),
        ("MEDIUM", 3),
        ("LOW", 0),
        ("NONE", 0),
        ("UNKNOWN", 1),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(st.by_severity, expected);
    assert_eq!(st.recent_updates, 1);
    assert_eq!(st.last_update, Some(now()));
    assert_eq!(st.llm.total, 8);
    assert_eq!(st.llm.processed, 2);
    assert_eq!(st.llm.pending, 6);
    assert_eq!(
        st.llm.high_priority_pending, 3,
        "4 high, one of them processed"
    );
    assert_eq!(st.llm.completion_percentage, 25.0);

    let dist = s.severity_distribution().await.unwrap();
    assert_eq!(dist.total, 8);
    assert_eq!(dist.distribution.len(), 6);
    assert_eq!(dist.distribution[0].severity, Severity::Critical);
    assert_eq!(dist.distribution[0].count, 2);
    assert_eq!(dist.distribution[0].percentage, 25.0);
    assert_eq!(dist.distribution[2].percentage, 37.5);

    let vendors = s.top_vendors(3).await.unwrap();
    assert_eq!(vendors.len(), 3);
    assert!(vendors.iter().all(|v| v.count == 1), "{vendors:?}");
    assert_eq!(vendors[0].name, "bsdi", "ties by name");

    let tl = s.timeline(30, now()).await.unwrap();
    assert_eq!(tl.len(), 30);
    assert_eq!(tl[0].date, day("2025-01-31"));
    assert_eq!(tl[29].date, day("2025-03-01"));
    let nonzero: Vec<(NaiveDate, u64)> = tl
        .iter()
        .filter(|d| d.count > 0)
        .map(|d| (d.date, d.count))
        .collect();
    assert_eq!(nonzero, [(day("2025-01-31"), 1), (day("2025-02-26"), 1)]);
}

async fn kev_before_and_after_the_nvd_record(s: Arc<dyn Store>) {
    let catalog = KevFacts {
        date_added: Some(day("2021-11-03")),
        due_date: Some(day("2022-05-03")),
        required_action: Some("Apply updates per vendor instructions.".into()),
        ransomware_use: Some(true),
        vulnerability_name: Some(
            "Microsoft Remote Desktop Services Remote Code Execution Vulnerability".into(),
        ),
    };
    // KEV first: nothing to update yet, but the facts are kept for later.
    let summary = s
        .apply_kev(&[(id("CVE-2019-0708"), catalog.clone())], now())
        .await
        .unwrap();
    assert_eq!(
        (summary.received, summary.updated, summary.unknown),
        (1, 0, 1)
    );
    let mut bluekeep = fixture("CVE-2019-0708");
    bluekeep.kev = None;
    s.upsert_cves(&[bluekeep.clone()], now()).await.unwrap();
    let r = get(&s, "CVE-2019-0708").await;
    assert!(r.exploited_in_the_wild);
    assert_eq!(r.kev_ransomware_use, Some(true));
    assert_eq!(r.cisa_due_date, Some(day("2022-05-03")));
    assert!(r.sources.contains(&"kev".to_string()));
    bluekeep.kev = Some(catalog.clone());
    assert_eq!(r.priority_score, priority_score(&bluekeep, now()));

    // NVD first, KEV later: the row is updated and its priority rises.
    let mut heartbleed = fixture("CVE-2014-0160");
    heartbleed.kev = None;
    s.upsert_cves(&[heartbleed.clone()], now()).await.unwrap();
    let before = get(&s, "CVE-2014-0160").await;
    assert!(!before.exploited_in_the_wild);
    assert_eq!(before.priority, Priority::Medium);
    let facts = KevFacts {
        date_added: Some(day("2022-05-04")),
        due_date: Some(day("2022-05-25")),
        required_action: Some("Apply updates per vendor instructions.".into()),
        ransomware_use: Some(false),
        vulnerability_name: Some("OpenSSL Information Disclosure Vulnerability".into()),
    };
    let later = now() + Duration::hours(2);
    let summary = s
        .apply_kev(&[(id("CVE-2014-0160"), facts.clone())], later)
        .await
        .unwrap();
    assert_eq!((summary.updated, summary.unknown), (1, 0));
    let after = get(&s, "CVE-2014-0160").await;
    assert!(after.exploited_in_the_wild);
    assert_eq!(after.kev_date_added, Some(day("2022-05-04")));
    assert_eq!(after.priority, Priority::High);
    assert!(after.priority_score > before.priority_score);
    assert_eq!(after.updated_at, later);
    // Applying the same catalog again writes nothing.
    let again = s
        .apply_kev(&[(id("CVE-2014-0160"), facts)], later + Duration::hours(1))
        .await
        .unwrap();
    assert_eq!(again.updated, 0);
    assert_eq!(get(&s, "CVE-2014-0160").await.updated_at, later);
    // A re-import of the NVD record (without KEV facts) keeps them.
    heartbleed.modified_at += Duration::days(1);
    heartbleed.description.push_str(" Known as Heartbleed.");
    s.upsert_cves(&[heartbleed], later).await.unwrap();
    let r = get(&s, "CVE-2014-0160").await;
    assert!(r.exploited_in_the_wild);
    assert_eq!(r.kev_ransomware_use, Some(false));
    assert!(r.description.ends_with("Known as Heartbleed."));
}

async fn epss_update_changes_priority(s: Arc<dyn Store>) {
    seed(&s).await;
    let before = get(&s, "CVE-2024-6387").await;
    let e = Epss {
        score: 0.97,
        percentile: Some(0.999),
        date: Some(day("2025-02-28")),
    };
    let summary = s
        .apply_epss(
            &[
                (id("CVE-2024-6387"), e.clone()),
                (id("CVE-2031-9999"), e.clone()),
            ],
            now(),
        )
        .await
        .unwrap();
    assert_eq!(
        (summary.received, summary.updated, summary.unknown),
        (2, 1, 1)
    );
    let after = get(&s, "CVE-2024-6387").await;
    assert_eq!(after.epss_score, Some(0.97));
    assert_eq!(after.epss_percentile, Some(0.999));
    assert_eq!(after.epss_date, Some(day("2025-02-28")));
    let mut expected = fixture("CVE-2024-6387");
    expected.epss = Some(e.clone());
    assert_eq!(after.priority_score, priority_score(&expected, now()));
    assert!(after.priority_score > before.priority_score);
    assert!(after.sources.contains(&"epss".to_string()));
    let again = s
        .apply_epss(&[(id("CVE-2024-6387"), e)], now())
        .await
        .unwrap();
    assert_eq!(again.updated, 0);
    let bad = Epss {
        score: f64::NAN,
        percentile: None,
        date: None,
    };
    assert!(matches!(
        s.apply_epss(&[(id("CVE-2024-6387"), bad)], now()).await,
        Err(StoreError::InvalidInput(_))
    ));
    // EPSS survives a re-import of the NVD record.
    let mut ssh = fixture("CVE-2024-6387");
    ssh.modified_at += Duration::days(1);
    ssh.description.push_str(" (regreSSHion)");
    s.upsert_cves(&[ssh], now()).await.unwrap();
    assert_eq!(get(&s, "CVE-2024-6387").await.epss_score, Some(0.97));
}

async fn recompute_priorities_follows_time(s: Arc<dyn Store>) {
    seed(&s).await;
    assert_eq!(
        s.recompute_priorities(now()).await.unwrap(),
        0,
        "nothing changed yet"
    );
    let later = now() + Duration::days(60);
    let changed = s.recompute_priorities(later).await.unwrap();
    assert!(changed >= 2, "{changed}");
    let r = get(&s, "CVE-2022-49267").await;
    let c = fixture("CVE-2022-49267");
    assert_eq!(r.priority, priority_class(&c, later));
    assert_eq!(r.priority, Priority::Low);
    assert_eq!(r.priority_score, priority_score(&c, later));
    assert_eq!(r.updated_at, now(), "decay is not a change of the record");
}

async fn ingestion_runs_are_recorded(s: Arc<dyn Store>) {
    assert!(s.ingestion_runs(10).await.unwrap().is_empty());
    let t0 = now();
    let nvd = s.start_ingestion_run("nvd", t0).await.unwrap();
    let kev = s
        .start_ingestion_run("kev", t0 + Duration::seconds(1))
        .await
        .unwrap();
    let runs = s.ingestion_runs(10).await.unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0].id, kev, "newest first");
    assert_eq!(runs[0].status, RunStatus::Running);
    assert_eq!(runs[0].completed_at, None);

    s.finish_ingestion_run(
        nvd,
        &RunOutcome {
            success: true,
            records_fetched: 2000,
            records_inserted: 1500,
            records_updated: 480,
            records_failed: 20,
            error: None,
        },
        t0 + Duration::milliseconds(90_500),
    )
    .await
    .unwrap();
    s.finish_ingestion_run(
        kev,
        &RunOutcome {
            success: false,
            error: Some("HTTP 503 from www.cisa.gov".into()),
            ..RunOutcome::default()
        },
        t0 + Duration::seconds(3),
    )
    .await
    .unwrap();
    let runs = s.ingestion_runs(10).await.unwrap();
    let n = runs.iter().find(|r| r.id == nvd).unwrap();
    assert_eq!(n.source, "nvd");
    assert_eq!(n.status, RunStatus::Success);
    assert_eq!(
        (
            n.records_fetched,
            n.records_inserted,
            n.records_updated,
            n.records_failed
        ),
        (2000, 1500, 480, 20)
    );
    assert_eq!(n.started_at, t0);
    assert_eq!(n.completed_at, Some(t0 + Duration::milliseconds(90_500)));
    assert_eq!(n.duration_seconds, Some(90.5));
    let k = runs.iter().find(|r| r.id == kev).unwrap();
    assert_eq!(k.status, RunStatus::Failed);
    assert_eq!(k.error.as_deref(), Some("HTTP 503 from www.cisa.gov"));
    assert_eq!(k.duration_seconds, Some(2.0));
    assert_eq!(s.ingestion_runs(1).await.unwrap().len(), 1);
    assert!(matches!(
        s.finish_ingestion_run(999_999, &RunOutcome::default(), t0)
            .await,
        Err(StoreError::NotFound(_))
    ));
}

/// A process killed mid-run never closes its row; the next run must not
/// leave it `running` for ever, nor close a run that is alive.
async fn runs_of_killed_processes_are_closed(s: Arc<dyn Store>) {
    let t0 = now();
    let dead = s.start_ingestion_run("nvd-feed", t0).await.unwrap();
    s.heartbeat_ingestion_run(dead, t0 + Duration::seconds(30))
        .await
        .unwrap();
    let never_beat = s
        .start_ingestion_run("kev", t0 + Duration::seconds(40))
        .await
        .unwrap();
    let alive = s.start_ingestion_run("nvd", t0).await.unwrap();
    s.heartbeat_ingestion_run(alive, t0 + Duration::minutes(9))
        .await
        .unwrap();

    let closed = s
        .close_silent_runs(t0 + Duration::minutes(5), t0 + Duration::minutes(10))
        .await
        .unwrap();
    assert_eq!(closed, 2);
    let runs = s.ingestion_runs(10).await.unwrap();
    let run = |id| runs.iter().find(|r| r.id == id).unwrap();
    assert_eq!(run(alive).status, RunStatus::Running);
    for (id, since) in [(dead, "00:00:30Z"), (never_beat, "00:00:40Z")] {
        let r = run(id);
        assert_eq!(r.status, RunStatus::Failed);
        assert_eq!(r.completed_at, Some(t0 + Duration::minutes(10)));
        let error = r.error.as_deref().unwrap_or_default();
        assert!(
            error.starts_with("abandoned: no sign of life since "),
            "{error}"
        );
        assert!(error.contains(since), "{error}");
    }
    // A closed run's heartbeat (a slow process that was wrongly given up)
    // does not reopen it.
    s.heartbeat_ingestion_run(dead, t0 + Duration::minutes(11))
        .await
        .unwrap();
    assert_eq!(
        s.ingestion_runs(10)
            .await
            .unwrap()
            .iter()
            .find(|r| r.id == dead)
            .unwrap()
            .status,
        RunStatus::Failed
    );
}

/// A run's heartbeat must not hang behind a long write transaction (on
/// SQLite one holds the write lock for a whole imported file): the beat
/// returns at once, and beats again once the file is committed.
async fn heartbeats_never_wait_for_a_file_import(s: Arc<dyn Store>) {
    let run = s.start_ingestion_run("nvd-feed", now()).await.unwrap();
    let mut file = s.begin_upserts().await.unwrap();
    file.upsert_cves(&fixtures(), now()).await.unwrap();
    // A hang guard, not a speed measurement: the busy timeout is 30 s.
    let beat = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        s.heartbeat_ingestion_run(run, now() + chrono::Duration::minutes(1)),
    )
    .await;
    assert!(matches!(beat, Ok(Ok(()))), "{beat:?}");
    file.commit().await.unwrap();
    s.heartbeat_ingestion_run(run, now() + chrono::Duration::minutes(2))
        .await
        .unwrap();
    // The committed beat keeps the run alive for whoever looks next.
    let closed = s
        .close_silent_runs(
            now() + chrono::Duration::minutes(1),
            now() + chrono::Duration::minutes(3),
        )
        .await
        .unwrap();
    assert_eq!(closed, 0);
}

async fn sync_state_round_trips(s: Arc<dyn Store>) {
    assert_eq!(s.get_state("nvd.last_mod_end").await.unwrap(), None);
    s.set_state("nvd.last_mod_end", "2025-02-28T00:00:00Z", now())
        .await
        .unwrap();
    s.set_state("kev.date_released", "2025-02-27T15:00:00.000Z", now())
        .await
        .unwrap();
    s.set_state("nvd.last_mod_end", "2025-03-01T00:00:00Z", now())
        .await
        .unwrap();
    assert_eq!(
        s.get_state("nvd.last_mod_end").await.unwrap().as_deref(),
        Some("2025-03-01T00:00:00Z")
    );
    assert_eq!(
        s.get_state("kev.date_released").await.unwrap().as_deref(),
        Some("2025-02-27T15:00:00.000Z")
    );
}

async fn cache_entries_are_cleaned_by_age(s: Arc<dyn Store>) {
    let t0 = now() - Duration::hours(30);
    let t1 = now() - Duration::hours(1);
    let stats = serde_json::json!({"total_vulnerabilities": 8, "by_severity": {"CRITICAL": 2}});
    s.put_stats_cache("stats", &stats, t0).await.unwrap();
    s.put_search_cache("q=openssh&page=1", &serde_json::json!([1, 2]), t0)
        .await
        .unwrap();
    s.put_search_cache("q=dell&page=1", &serde_json::json!({"total": 1}), t1)
        .await
        .unwrap();
    let got = s.get_stats_cache("stats").await.unwrap().unwrap();
    assert_eq!(got.value, stats);
    assert_eq!(got.stored_at, t0);
    assert_eq!(s.get_stats_cache("missing").await.unwrap(), None);
    let deleted = s.clean_cache(now() - Duration::hours(24)).await.unwrap();
    assert_eq!(deleted, 2);
    assert_eq!(s.get_stats_cache("stats").await.unwrap(), None);
    assert_eq!(s.get_search_cache("q=openssh&page=1").await.unwrap(), None);
    let kept = s.get_search_cache("q=dell&page=1").await.unwrap().unwrap();
    assert_eq!(kept.value, serde_json::json!({"total": 1}));
    // Overwriting a key replaces value and time.
    s.put_stats_cache("stats", &serde_json::json!(1), now())
        .await
        .unwrap();
    assert_eq!(
        s.get_stats_cache("stats").await.unwrap().unwrap().stored_at,
        now()
    );
    assert_eq!(s.clean_cache(now() - Duration::hours(24)).await.unwrap(), 0);
}

async fn sql_injection_in_filters_changes_nothing(s: Arc<dyn Store>) {
    seed(&s).await;
    let attacks = [
        "x' OR '1'='1",
        "CWE-79'; DROP TABLE vulnerabilities; --",
        "%' OR 1=1 --",
        "\") OR 1=1 --",
        "%",
        "_____",
        "microsoft' UNION SELECT * FROM sync_state --",
    ];
    for a in attacks {
        for q in [
            ListQuery {
                vendor: Some(a.into()),
                ..all()
            },
            ListQuery {
                product: Some(a.into()),
                ..all()
            },
            ListQuery {
                cwe: Some(a.into()),
                ..all()
            },
            ListQuery {
                q: Some(a.into()),
                ..all()
            },
        ] {
            let page = s.list_cves(&q).await.unwrap();
            assert_eq!(page.total, 0, "{a:?} matched something: {q:?}");
        }
        assert!(s.suggest(a, 10).await.unwrap().is_empty(), "{a:?}");
        s.set_state(a, a, now()).await.unwrap();
        assert_eq!(s.get_state(a).await.unwrap().as_deref(), Some(a));
    }
    assert!(a_sort_outside_the_whitelist_is_refused());
    assert_eq!(s.list_cves(&all()).await.unwrap().total, 8, "table intact");
}

// ------------------------------------------------------- full-text search

/// The ids found for `text` with every other filter unset, in id order.
async fn search(s: &Arc<dyn Store>, text: &str) -> Vec<String> {
    let q = ListQuery {
        q: Some(text.into()),
        ..all()
    };
    ids(s, q).await
}

/// The ids found for `text`, best match first.
async fn ranked(s: &Arc<dyn Store>, text: &str) -> Vec<String> {
    let q = ListQuery {
        q: Some(text.into()),
        sort: SortField::Relevance,
        order: SortOrder::Desc,
        ..all()
    };
    ids(s, q).await
}

async fn full_text_search_finds_words_in_every_field(s: Arc<dyn Store>) {
    seed(&s).await;
    // Description words, any case, stemmed ("packet" finds "packets").
    assert_eq!(search(&s, "Heartbeat Extension").await, ["CVE-2014-0160"]);
    assert_eq!(search(&s, "crafted PACKET").await, ["CVE-1999-0001"]);
    // Every word must occur.
    assert!(search(&s, "heartbeat desktop").await.is_empty());
    // CVE ids, exactly: 3400 is a whole word, not a prefix of 34000.
    assert_eq!(search(&s, "CVE-2024-3400").await, ["CVE-2024-3400"]);
    assert_eq!(search(&s, "cve-2024-3400").await, ["CVE-2024-3400"]);
    assert!(search(&s, "CVE-2024-340").await.is_empty());
    // An id mentioned in another CVE's description finds that CVE too.
    assert_eq!(search(&s, "CVE-2006-5051").await, ["CVE-2024-6387"]);
    // Vendors and products, as stored (underscores and hyphens separate
    // words, as in the text).
    assert_eq!(search(&s, "paloaltonetworks").await, ["CVE-2024-3400"]);
    assert_eq!(search(&s, "filezilla_server").await, ["CVE-2014-0160"]);
    assert_eq!(search(&s, "alienware").await, ["CVE-2024-0158"]);
    assert_eq!(search(&s, "freebsd").await, ["CVE-1999-0001"]);
    // The LLM's title and description, once saved.
    assert!(search(&s, "takeover").await.is_empty());
    assert!(search(&s, "logging").await.is_empty());
    s.save_enrichment(&id("CVE-2024-3400"), &enrichment(now()))
        .await
        .unwrap();
    assert_eq!(search(&s, "takeover").await, ["CVE-2024-3400"]);
    assert_eq!(search(&s, "without logging").await, ["CVE-2024-3400"]);
    // Rejected CVEs stay hidden unless asked for.
    assert!(search(&s, "withdrawn").await.is_empty());
    let q = ListQuery {
        q: Some("withdrawn".into()),
        include_rejected: true,
        ..all()
    };
    assert_eq!(ids(&s, q).await, ["CVE-2023-5129"]);
}

async fn full_text_search_combines_with_every_filter(s: Arc<dyn Store>) {
    seed(&s).await;
    // "remote" is in three CVEs; CVE-1999-0001 is not exploited.
    assert_eq!(
        search(&s, "remote").await,
        ["CVE-1999-0001", "CVE-2014-0160", "CVE-2019-0708"]
    );
    let with = |f: fn(&mut ListQuery)| {
        let mut q = ListQuery {
            q: Some("remote".into()),
            ..all()
        };
        f(&mut q);
        q
    };
    let cases: Vec<(ListQuery, Vec<&str>)> = vec![
        (
            with(|q| q.exploited = Some(true)),
            vec!["CVE-2014-0160", "CVE-2019-0708"],
        ),
        (with(|q| q.exploited = Some(false)), vec!["CVE-1999-0001"]),
        (
            with(|q| q.severity = Some(Severity::Critical)),
            vec!["CVE-2019-0708"],
        ),
        (
            with(|q| q.vendor = Some("Microsoft".into())),
            vec!["CVE-2019-0708"],
        ),
        (
            with(|q| q.product = Some("openssl".into())),
            vec!["CVE-2014-0160"],
        ),
        (
            with(|q| q.cwe = Some("cwe-20".into())),
            vec!["CVE-1999-0001"],
        ),
        (
            with(|q| q.min_cvss = Some(7.0)),
            vec!["CVE-2014-0160", "CVE-2019-0708"],
        ),
        (with(|q| q.max_cvss = Some(7.0)), vec!["CVE-1999-0001"]),
        (
            with(|q| {
                q.published_after = Some(day("2014-01-01"));
                q.published_before = Some(day("2019-05-16"));
            }),
            vec!["CVE-2014-0160", "CVE-2019-0708"],
        ),
        (
            with(|q| q.published_before = Some(day("2014-04-06"))),
            vec!["CVE-1999-0001"],
        ),
        (
            with(|q| q.priority = Some(Priority::High)),
            vec!["CVE-2014-0160", "CVE-2019-0708"],
        ),
    ];
    for (q, want) in cases {
        assert_eq!(ids(&s, q.clone()).await, want, "{q:?}");
        // Ranked, the same rows, and the same total.
        let ranked_q = ListQuery {
            sort: SortField::Relevance,
            ..q.clone()
        };
        let page = s.list_cves(&ranked_q).await.unwrap();
        let mut got: Vec<String> = page.items.iter().map(|r| r.cve_id.clone()).collect();
        got.sort();
        assert_eq!(got, want, "{ranked_q:?}");
        assert_eq!(page.total, want.len() as u64, "{ranked_q:?}");
    }
    // Totals and pages of a ranked search.
    let q = ListQuery {
        q: Some("remote".into()),
        sort: SortField::Relevance,
        page_size: 2,
        page: 2,
        ..ListQuery::default()
    };
    let page = s.list_cves(&q).await.unwrap();
    assert_eq!((page.total, page.total_pages, page.items.len()), (3, 2, 1));
    // Relevance without a text to rank falls back to priority order.
    let by_relevance = ListQuery {
        sort: SortField::Relevance,
        ..ListQuery::default()
    };
    let by_priority = ListQuery {
        sort: SortField::PriorityScore,
        ..ListQuery::default()
    };
    assert_eq!(ids(&s, by_relevance).await, ids(&s, by_priority).await);
}

async fn relevance_puts_id_and_title_hits_first(s: Arc<dyn Store>) {
    seed(&s).await;
    let t = at("2025-01-10T00:00:00.000");
    // Same CVSS, so priority cannot decide: only the text can.
    let mut headline = Cve::new(
        id("CVE-2025-10001"),
        "Sandbox escape in the Acme renderer. Crafted pages can run code outside the sandbox.",
        t,
    );
    let mut passing = Cve::new(
        id("CVE-2025-10002"),
        "An integer overflow in the Acme image decoder allows a denial of service through a \
         malformed file. The decoder is used by many components, among them the print \
         spooler, the thumbnail service, the mail preview and, on some platforms, the \
         renderer's sandbox helper, which restarts after the crash.",
        t,
    );
    // Mentions CVE-2006-5051 only in passing, like CVE-2024-6387 does.
    let mut itself = Cve::new(
        id("CVE-2006-5051"),
        "Signal handler race condition in OpenSSH before 4.4 allows remote attackers to \
         cause a denial of service.",
        at("2006-09-27T23:07:00.000"),
    );
    for c in [&mut headline, &mut passing, &mut itself] {
        c.cvss = Some(Cvss {
            score: 5.0,
            vector: "CVSS:3.1/AV:N/AC:H/PR:N/UI:R/S:U/C:L/I:L/A:L".into(),
            version: CvssVersion::V31,
        });
        c.severity = Severity::Medium;
    }
    // The CVE mentioning the id is the higher priority one (CVSS 8.1).
    s.upsert_cves(&[headline, passing, itself], now())
        .await
        .unwrap();
    assert_eq!(
        ranked(&s, "sandbox").await,
        ["CVE-2025-10001", "CVE-2025-10002"]
    );
    assert_eq!(
        ranked(&s, "CVE-2006-5051").await,
        ["CVE-2006-5051", "CVE-2024-6387"]
    );
    assert_eq!(
        ranked(&s, "cve-2006-5051").await[0],
        "CVE-2006-5051",
        "any case"
    );
    // asc reverses the ranking.
    let q = ListQuery {
        q: Some("sandbox".into()),
        sort: SortField::Relevance,
        order: SortOrder::Asc,
        ..all()
    };
    assert_eq!(ids(&s, q).await, ["CVE-2025-10002", "CVE-2025-10001"]);
    // An LLM title without the word changes nothing.
    let mut e = enrichment(now());
    e.simple_title = "Image decoder crash".into();
    s.save_enrichment(&id("CVE-2025-10002"), &e).await.unwrap();
    assert_eq!(ranked(&s, "sandbox").await[0], "CVE-2025-10001");
    // Other sorts still work with a text.
    let q = ListQuery {
        q: Some("denial".into()),
        sort: SortField::PublishedAt,
        order: SortOrder::Asc,
        ..all()
    };
    assert_eq!(
        ids(&s, q).await,
        ["CVE-1999-0001", "CVE-2006-5051", "CVE-2025-10002"]
    );
}

async fn query_syntax_in_q_is_plain_text(s: Arc<dyn Store>) {
    seed(&s).await;
    // FTS5 and tsquery syntax is plain punctuation: the words around it
    // are searched, and nothing is an error. `None`: any result will do
    // (a lone English stop word such as "and" is a word on SQLite, and
    // ignored by PostgreSQL's dictionary).
    let three = || Some(vec!["CVE-1999-0001", "CVE-2014-0160", "CVE-2019-0708"]);
    let heartbeat = || Some(vec!["CVE-2014-0160"]);
    let none = || Some(vec![]);
    for (q, want) in [
        ("\"remote desktop\"", Some(vec!["CVE-2019-0708"])),
        ("\"remote", three()),
        ("remote*", three()),
        ("desk*", none()),
        ("NEAR(remote desktop)", none()),
        ("NEAR(remote", none()),
        ("remote NEAR desktop", none()),
        ("desktop:remote", none()),
        ("description:heartbeat", none()),
        ("'heartbeat'", heartbeat()),
        ("heartbeat'", heartbeat()),
        ("-heartbeat", heartbeat()),
        ("remote -heartbeat", heartbeat()),
        ("heartbeat OR desktop", none()),
        ("heartbeat | desktop", none()),
        ("heartbeat & !openssl", heartbeat()),
        ("heartbeat:*", heartbeat()),
        ("heartbeat:A", None),
        ("(heartbeat)", heartbeat()),
        ("{cve_id}: heartbeat", none()),
        ("heartbeat^2", none()),
        ("\"", none()),
        ("*", none()),
        (":", none()),
        ("'", none()),
        ("-", none()),
        ("\\", none()),
        ("%_%", none()),
        ("NEAR(", None),
        ("AND", None),
        ("' OR ''='", None),
    ] {
        for sort in [SortField::Relevance, SortField::CveId] {
            let query = ListQuery {
                q: Some(q.into()),
                sort,
                ..all()
            };
            let page = s
                .list_cves(&query)
                .await
                .unwrap_or_else(|e| panic!("{q:?} ({sort}): {e}"));
            let mut got: Vec<String> = page.items.into_iter().map(|r| r.cve_id).collect();
            got.sort();
            assert!(got.len() < 8, "{q:?} ({sort}) matched everything");
            if let Some(want) = &want {
                assert_eq!(&got, want, "{q:?} ({sort})");
            }
        }
    }
}

/// A first import indexes thousands of CVEs at once (PostgreSQL rebuilds
/// its GIN index for that, see `index_search`); afterwards the index must
/// hold every one of them and take small changes as before.
async fn a_bulk_load_is_searchable_and_stays_updatable(s: Arc<dyn Store>) {
    let template = fixture("CVE-2024-3400");
    let words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"];
    let cves: Vec<Cve> = (0..6_000u32)
        .map(|n| {
            let mut c = template.clone();
            c.cve_id = id(&format!("CVE-2023-{:05}", 10_000 + n));
            // Every 1000th CVE carries one rare word; all carry "firewall".
            c.description = format!(
                "Flaw number {n} in the firewall{}.",
                if n % 1000 == 0 {
                    format!(" {}", words[(n / 1000) as usize])
                } else {
                    String::new()
                }
            );
            c.title = Cve::title_from_description(&c.cve_id, &c.description);
            c
        })
        .collect();
    for chunk in cves.chunks(1000) {
        s.upsert_cves(chunk, now()).await.unwrap();
    }
    assert_eq!(s.index_search().await.unwrap(), 6_000);
    assert_eq!(s.index_search().await.unwrap(), 0, "nothing left pending");
    assert_eq!(search(&s, "charlie").await, ["CVE-2023-12000"]);
    let page = s
        .list_cves(&ListQuery {
            q: Some("firewall".into()),
            page_size: 1,
            ..all()
        })
        .await
        .unwrap();
    assert_eq!(page.total, 6_000);
    // A small change after the bulk load is indexed incrementally.
    let mut c = cves[2_000].clone();
    c.description = "Flaw in the router, now with zulu.".into();
    c.title = Cve::title_from_description(&c.cve_id, &c.description);
    c.modified_at += Duration::days(1);
    s.upsert_cves(&[c], now()).await.unwrap();
    assert_eq!(search(&s, "zulu").await, ["CVE-2023-12000"]);
    assert!(search(&s, "charlie").await.is_empty());
    assert_eq!(search(&s, "echo").await, ["CVE-2023-14000"]);
}

/// Ids matching one filter, for comparing a bulk-loaded store with a
/// normally filled one.
async fn filtered(s: &Arc<dyn Store>, f: fn(&mut ListQuery)) -> Vec<String> {
    let mut q = all();
    f(&mut q);
    ids(s, q).await
}

/// What a first import through `begin_bulk_load`/`end_bulk_load` leaves
/// behind answers every filter and sort as a store filled row by row.
async fn a_bulk_load_answers_like_a_normal_one(s: Arc<dyn Store>) {
    assert!(
        s.begin_bulk_load().await.unwrap(),
        "an empty store loads in bulk"
    );
    seed(&s).await;
    s.end_bulk_load().await.unwrap();
    s.end_bulk_load().await.unwrap();
    assert_eq!(
        filtered(&s, |q| q.vendor = Some("PaloAltoNetworks".into())).await,
        ["CVE-2024-3400"]
    );
    assert_eq!(
        filtered(&s, |q| q.product = Some("pan-os".into())).await,
        ["CVE-2024-3400"]
    );
    assert!(filtered(&s, |q| q.cwe = Some("cwe-77".into()))
        .await
        .contains(&"CVE-2024-3400".to_string()));
    let by_published = filtered(&s, |q| {
        q.sort = SortField::PublishedAt;
        q.order = SortOrder::Asc;
    })
    .await;
    let mut expected = fixtures();
    expected.sort_by_key(|c| c.published_at);
    let expected: Vec<String> = expected
        .iter()
        .filter(|c| c.vuln_status != VulnStatus::Rejected)
        .map(|c| c.cve_id.to_string())
        .collect();
    assert_eq!(by_published, expected);
    // A store that is not empty is loaded with its indexes kept.
    let many: Vec<Cve> = (0..10_001u32)
        .map(|n| {
            let mut c = fixture("CVE-2024-3400");
            c.cve_id = id(&format!("CVE-2022-{:05}", 10_000 + n));
            c
        })
        .collect();
    for chunk in many.chunks(2_000) {
        s.upsert_cves(chunk, now()).await.unwrap();
    }
    assert!(!s.begin_bulk_load().await.unwrap());
}

async fn updated_cves_are_searched_by_their_new_words(s: Arc<dyn Store>) {
    seed(&s).await;
    assert_eq!(
        search(&s, "authenticated malicious").await,
        ["CVE-2024-0158"]
    );
    // A newer NVD record rewrites the description.
    let mut c = fixture("CVE-2024-0158");
    c.description = "Dell BIOS contains a buffer overflow in the SMM handler.".into();
    c.title = Cve::title_from_description(&c.cve_id, &c.description);
    c.vendors = vec!["dell".into()];
    c.products = vec!["latitude_7420_firmware".into()];
    c.modified_at += Duration::days(1);
    s.upsert_cves(&[c.clone()], now()).await.unwrap();
    assert_eq!(search(&s, "SMM handler").await, ["CVE-2024-0158"]);
    assert_eq!(search(&s, "latitude").await, ["CVE-2024-0158"]);
    assert!(search(&s, "authenticated malicious").await.is_empty());
    assert!(search(&s, "alienware").await.is_empty());
    // An older record changes nothing, in the table or in the index.
    let old = fixture("CVE-2024-0158");
    s.upsert_cves(&[old], now()).await.unwrap();
    assert!(search(&s, "alienware").await.is_empty());
    assert_eq!(search(&s, "SMM").await, ["CVE-2024-0158"]);
    // LLM text replaced by a new enrichment is replaced in the index too.
    s.save_enrichment(&id("CVE-2024-0158"), &enrichment(now()))
        .await
        .unwrap();
    assert_eq!(search(&s, "takeover").await, ["CVE-2024-0158"]);
    let mut e = enrichment(now());
    e.simple_title = "Memory corruption in laptop firmware".into();
    e.simple_description = "A bug in the firmware lets code run early. Update it.".into();
    s.save_enrichment(&id("CVE-2024-0158"), &e).await.unwrap();
    assert!(search(&s, "takeover").await.is_empty());
    assert_eq!(search(&s, "laptop").await, ["CVE-2024-0158"]);
    // KEV and EPSS do not touch the text; the CVE is still found.
    s.apply_kev(
        &[(
            id("CVE-2024-0158"),
            KevFacts {
                date_added: Some(day("2025-02-01")),
                ..KevFacts::default()
            },
        )],
        now(),
    )
    .await
    .unwrap();
    assert_eq!(search(&s, "laptop").await, ["CVE-2024-0158"]);
}

async fn search_index_catches_up_once(s: Arc<dyn Store>) {
    seed(&s).await;
    // Nine new rows: the first run indexes them, the next finds nothing.
    assert_eq!(s.index_search().await.unwrap(), 9);
    assert_eq!(s.index_search().await.unwrap(), 0);
    // A re-import writes nothing and leaves nothing to index.
    s.upsert_cves(&fixtures(), now()).await.unwrap();
    assert_eq!(s.index_search().await.unwrap(), 0);
    // One changed CVE, one enrichment, one new CVE: three to index.
    let mut c = fixture("CVE-2024-6387");
    c.description = "OpenSSH sshd signal handler race.".into();
    c.modified_at += Duration::days(1);
    let new = Cve::new(id("CVE-2025-10003"), "Zebra router backdoor.", now());
    s.upsert_cves(&[c, new], now()).await.unwrap();
    s.save_enrichment(&id("CVE-2014-0160"), &enrichment(now()))
        .await
        .unwrap();
    assert_eq!(s.index_search().await.unwrap(), 3);
    assert_eq!(search(&s, "zebra").await, ["CVE-2025-10003"]);
    // A search indexes on its own what is pending.
    let newer = Cve::new(id("CVE-2025-10004"), "Yak shaving daemon overflow.", now());
    s.upsert_cves(&[newer], now()).await.unwrap();
    assert_eq!(search(&s, "yak").await, ["CVE-2025-10004"]);
    assert_eq!(s.index_search().await.unwrap(), 0);
}

fn a_sort_outside_the_whitelist_is_refused() -> bool {
    "priority_score; DROP TABLE vulnerabilities"
        .parse::<SortField>()
        .is_err()
        && "sideways".parse::<SortOrder>().is_err()
}

async fn suggestions_by_id_and_title(s: Arc<dyn Store>) {
    seed(&s).await;
    let sug = s.suggest("cve-2024-", 10).await.unwrap();
    let got: Vec<&str> = sug.iter().map(|x| x.cve_id.as_str()).collect();
    assert_eq!(got, ["CVE-2024-6387", "CVE-2024-3400", "CVE-2024-0158"]);
    assert_eq!(sug[1].title, fixture("CVE-2024-3400").title);
    // Title prefix, case-insensitive; `_` matches literally.
    let sug = s.suggest("IP_INPUT", 10).await.unwrap();
    assert_eq!(sug.len(), 1);
    assert_eq!(sug[0].cve_id, "CVE-1999-0001");
    assert!(s.suggest("ip%input", 10).await.unwrap().is_empty());
    assert_eq!(s.suggest("CVE-", 2).await.unwrap().len(), 2);
    assert!(
        s.suggest("CVE-2023-5129", 10).await.unwrap().is_empty(),
        "Rejected"
    );
    assert!(s.suggest("  ", 10).await.unwrap().is_empty());
}

async fn llm_bookkeeping(s: Arc<dyn Store>) {
    seed(&s).await;
    let high = s.llm_candidates(Some(Priority::High), 10).await.unwrap();
    let got: Vec<&str> = high.iter().map(|r| r.cve_id.as_str()).collect();
    assert_eq!(got.len(), 4);
    assert_eq!(got[0], "CVE-2024-3400", "highest score first");
    assert!(high
        .windows(2)
        .all(|w| w[0].priority_score >= w[1].priority_score));
    assert_eq!(
        s.llm_candidates(None, 100).await.unwrap().len(),
        8,
        "Rejected excluded"
    );

    s.record_llm_failure(&id("CVE-2024-3400"), "ollama: connection refused", now())
        .await
        .unwrap();
    s.record_llm_failure(&id("CVE-2024-3400"), "ollama: timeout", now())
        .await
        .unwrap();
    let r = get(&s, "CVE-2024-3400").await;
    assert_eq!(r.llm_attempts, 2);
    assert_eq!(r.llm_error.as_deref(), Some("ollama: timeout"));
    assert!(!r.llm_processed);

    let e = enrichment(now() + Duration::minutes(5));
    s.save_enrichment(&id("CVE-2024-3400"), &e).await.unwrap();
    let r = get(&s, "CVE-2024-3400").await;
    assert!(r.llm_processed);
    assert_eq!(r.llm_error, None);
    assert_eq!(r.llm_processed_at, Some(e.processed_at));
    assert_eq!(r.llm_input_hash.as_deref(), Some("abc123"));
    assert_eq!(r.recommended_action, e.recommended_action);
    assert_eq!(
        r.updated_at,
        now(),
        "enrichment is not a change of the record"
    );
    let high = s.llm_candidates(Some(Priority::High), 10).await.unwrap();
    assert_eq!(high.len(), 3);
    assert!(matches!(
        s.save_enrichment(&id("CVE-2000-1234"), &e).await,
        Err(StoreError::NotFound(_))
    ));
}

// ------------------------------------------------------ LLM claims

/// A batch claim of every class, `limit` rows, 10 minutes, 3 attempts.
fn batch(limit: u32) -> LlmClaim {
    LlmClaim {
        priority: None,
        limit,
        claim_for: Duration::minutes(10),
        created_after: None,
        max_attempts: LLM_MAX_ATTEMPTS,
    }
}

fn cve_ids(rows: &[VulnerabilityRow]) -> Vec<String> {
    rows.iter().map(|r| r.cve_id.clone()).collect()
}

/// The claim order: priority score descending, then id ascending.
fn assert_claim_order(rows: &[VulnerabilityRow]) {
    assert!(
        rows.windows(2)
            .all(|w| w[0].priority_score > w[1].priority_score
                || (w[0].priority_score == w[1].priority_score && w[0].id < w[1].id)),
        "claim order: {:?}",
        rows.iter()
            .map(|r| (&r.cve_id, r.priority_score, r.id))
            .collect::<Vec<_>>()
    );
}

/// `n` plain CVEs (CVE-2030-10000...), all of the same low priority.
fn synthetic(n: usize) -> Vec<Cve> {
    (0..n)
        .map(|i| {
            let mut c = Cve::new(
                id(&format!("CVE-2030-{}", 10_000 + i)),
                format!("Synthetic flaw number {i} in a widget."),
                at("2025-02-01T00:00:00.000"),
            );
            c.sources = vec!["nvd".into()];
            c
        })
        .collect()
}

async fn concurrent_llm_batch_claims_never_overlap(s: Arc<dyn Store>) {
    seed(&s).await;
    s.upsert_cves(&synthetic(200), now()).await.unwrap();
    // 208 eligible (the Rejected one is not); four claimers asking for 60
    // each at the same moment must share them out without any overlap.
    let claim =
        |s: Arc<dyn Store>| tokio::spawn(async move { s.claim_llm_batch(&batch(60), now()).await });
    let (a, b, c, d) = tokio::join!(
        claim(s.clone()),
        claim(s.clone()),
        claim(s.clone()),
        claim(s.clone())
    );
    let lists: Vec<Vec<VulnerabilityRow>> = [a, b, c, d]
        .into_iter()
        .map(|r| r.unwrap().unwrap())
        .collect();
    let mut seen = std::collections::BTreeSet::new();
    for list in &lists {
        assert!(list.len() <= 60);
        assert_claim_order(list);
        for r in list {
            assert!(seen.insert(r.cve_id.clone()), "{} claimed twice", r.cve_id);
        }
    }
    assert_eq!(seen.len(), 208, "every eligible CVE claimed exactly once");
    assert!(!seen.contains("CVE-2023-5129"), "Rejected never claimed");
    assert!(s
        .claim_llm_batch(&batch(60), now())
        .await
        .unwrap()
        .is_empty());

    // The same with two claimers through tokio::join! on one task.
    let later = now() + Duration::hours(1);
    let big = batch(150);
    let (x, y) = tokio::join!(
        s.claim_llm_batch(&big, later),
        s.claim_llm_batch(&big, later)
    );
    let (x, y) = (x.unwrap(), y.unwrap());
    let mut all: Vec<String> = cve_ids(&x);
    all.extend(cve_ids(&y));
    let unique: std::collections::BTreeSet<_> = all.iter().cloned().collect();
    assert_eq!(all.len(), 208);
    assert_eq!(unique.len(), 208);
}

async fn llm_batch_claim_order_and_exclusions(s: Arc<dyn Store>) {
    seed(&s).await;
    // Processed, parked and claimed CVEs are not eligible.
    s.save_enrichment(&id("CVE-2024-3400"), &enrichment(now()))
        .await
        .unwrap();
    for _ in 0..LLM_MAX_ATTEMPTS {
        s.record_llm_failure(&id("CVE-2014-0160"), "bad output", now())
            .await
            .unwrap();
    }
    assert!(matches!(
        s.claim_llm_one(&id("CVE-2019-0708"), None, Duration::minutes(10), 3, now())
            .await
            .unwrap(),
        ClaimOne::Claimed(_)
    ));
    // One failure is not parking: still eligible.
    s.record_llm_failure(&id("CVE-2024-6387"), "bad output", now())
        .await
        .unwrap();

    let rows = s.claim_llm_batch(&batch(100), now()).await.unwrap();
    let got = cve_ids(&rows);
    assert_claim_order(&rows);
    let mut expected: Vec<VulnerabilityRow> = s
        .llm_candidates(None, 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| !["CVE-2014-0160", "CVE-2019-0708"].contains(&r.cve_id.as_str()))
        .collect();
    expected.sort_by(|a, b| {
        b.priority_score
            .total_cmp(&a.priority_score)
            .then(a.id.cmp(&b.id))
    });
    assert_eq!(got, cve_ids(&expected));
    assert_eq!(got.len(), 5, "{got:?}");
    for excluded in [
        "CVE-2024-3400",
        "CVE-2014-0160",
        "CVE-2019-0708",
        "CVE-2023-5129",
    ] {
        assert!(!got.iter().any(|g| g == excluded), "{excluded} claimed");
    }
    let until = micros(now() + Duration::minutes(10));
    assert!(rows.iter().all(|r| r.llm_claimed_until == Some(until)));
    for r in &rows {
        assert_eq!(get(&s, &r.cve_id).await.llm_claimed_until, Some(until));
    }

    // A class filter, and the limit.
    let later = now() + Duration::hours(1);
    let high = s
        .claim_llm_batch(
            &LlmClaim {
                priority: Some(Priority::High),
                ..batch(100)
            },
            later,
        )
        .await
        .unwrap();
    assert!(!high.is_empty());
    assert!(high.iter().all(|r| r.priority == Priority::High));
    let one = s.claim_llm_batch(&batch(1), later).await.unwrap();
    assert_eq!(one.len(), 1);
    assert_ne!(one[0].priority, Priority::High, "high ones are claimed");
    assert!(s
        .claim_llm_batch(&batch(0), later)
        .await
        .unwrap()
        .is_empty());
}

/// Both backends keep microseconds.
fn micros(t: DateTime<Utc>) -> DateTime<Utc> {
    use chrono::SubsecRound;
    t.trunc_subsecs(6)
}

async fn llm_claim_expires_and_can_be_released(s: Arc<dyn Store>) {
    seed(&s).await;
    let first = s.claim_llm_batch(&batch(100), now()).await.unwrap();
    assert_eq!(first.len(), 8);
    // Still held five minutes later...
    let t5 = now() + Duration::minutes(5);
    assert!(s.claim_llm_batch(&batch(100), t5).await.unwrap().is_empty());
    // ...but a dead worker's claim lapses: claimable again after expiry
    // (at exactly the expiry time too).
    let t10 = now() + Duration::minutes(10);
    let again = s.claim_llm_batch(&batch(100), t10).await.unwrap();
    assert_eq!(cve_ids(&again), cve_ids(&first));

    // Released (LLM unreachable): pending at once, no attempt recorded.
    s.release_llm_claim(&id("CVE-2024-3400")).await.unwrap();
    let r = get(&s, "CVE-2024-3400").await;
    assert_eq!(r.llm_claimed_until, None);
    assert_eq!(r.llm_attempts, 0);
    assert_eq!(r.llm_error, None);
    let t11 = now() + Duration::minutes(11);
    assert_eq!(
        cve_ids(&s.claim_llm_batch(&batch(100), t11).await.unwrap()),
        vec!["CVE-2024-3400".to_string()]
    );
    assert!(matches!(
        s.release_llm_claim(&id("CVE-2000-1234")).await,
        Err(StoreError::NotFound(_))
    ));
}

async fn llm_batch_claim_created_after(s: Arc<dyn Store>) {
    seed(&s).await; // created at now()
    let added = now() + Duration::hours(2);
    s.upsert_cves(&synthetic(3), added).await.unwrap();
    let new_only = LlmClaim {
        created_after: Some(added - Duration::hours(1)),
        ..batch(100)
    };
    let rows = s.claim_llm_batch(&new_only, added).await.unwrap();
    assert_eq!(
        cve_ids(&rows),
        vec!["CVE-2030-10000", "CVE-2030-10001", "CVE-2030-10002"],
        "only CVEs added in the last hour, same score so by id"
    );
    // Bound inclusive: created exactly at created_after counts.
    let rest = s
        .claim_llm_batch(
            &LlmClaim {
                created_after: Some(now()),
                ..batch(100)
            },
            added,
        )
        .await
        .unwrap();
    assert_eq!(rest.len(), 8);
}

async fn llm_claim_one_outcomes(s: Arc<dyn Store>) {
    seed(&s).await;
    // Sub-microsecond parts in `now` must not break the expected-claim match.
    let t = now() + Duration::nanoseconds(123_456_789);
    let ten = Duration::minutes(10);
    let claim_one = |cve: &'static str, expected: Option<DateTime<Utc>>, at: DateTime<Utc>| {
        let s = s.clone();
        async move {
            s.claim_llm_one(&id(cve), expected, ten, 3, at)
                .await
                .unwrap()
        }
    };

    assert_eq!(
        claim_one("CVE-2000-1234", None, t).await,
        ClaimOne::NotFound
    );

    // Unclaimed: claimed.
    let ClaimOne::Claimed(row) = claim_one("CVE-2024-6387", None, t).await else {
        panic!("unclaimed CVE is claimed");
    };
    assert_eq!(row.cve_id, "CVE-2024-6387");
    assert_eq!(row.llm_claimed_until, Some(micros(t + ten)));
    // Held by someone else: refused with the holder's expiry.
    assert_eq!(
        claim_one("CVE-2024-6387", None, t).await,
        ClaimOne::ClaimedByOther {
            until: micros(t + ten)
        }
    );
    assert_eq!(
        claim_one("CVE-2024-6387", Some(t), t).await,
        ClaimOne::ClaimedByOther {
            until: micros(t + ten)
        },
        "a wrong expected claim is someone else's"
    );
    // Expired: claimable again.
    assert!(matches!(
        claim_one("CVE-2024-6387", None, t + ten).await,
        ClaimOne::Claimed(_)
    ));

    // A batch's claim, handed to its task: the task renews it once.
    let rows = s
        .claim_llm_batch(
            &LlmClaim {
                priority: Some(Priority::High),
                limit: 1,
                ..batch(1)
            },
            t,
        )
        .await
        .unwrap();
    let batch_row = &rows[0];
    assert_eq!(batch_row.cve_id, "CVE-2024-3400");
    let batch_until = batch_row.llm_claimed_until.expect("claimed");
    assert_eq!(
        claim_one("CVE-2024-3400", None, t).await,
        ClaimOne::ClaimedByOther { until: batch_until },
        "a second task without the batch's claim is refused"
    );
    let t2 = t + Duration::seconds(30);
    let ClaimOne::Claimed(renewed) = claim_one("CVE-2024-3400", Some(batch_until), t2).await else {
        panic!("the batch's task takes over its claim");
    };
    assert_eq!(renewed.llm_claimed_until, Some(micros(t2 + ten)));
    assert_eq!(
        claim_one("CVE-2024-3400", Some(batch_until), t2).await,
        ClaimOne::ClaimedByOther {
            until: micros(t2 + ten)
        },
        "only once: the claim has moved on"
    );

    // Processed.
    s.save_enrichment(&id("CVE-2024-3400"), &enrichment(t2))
        .await
        .unwrap();
    assert_eq!(
        claim_one("CVE-2024-3400", None, t2).await,
        ClaimOne::AlreadyProcessed
    );

    // Parked, with its last error.
    for n in 1..=3 {
        s.record_llm_failure(&id("CVE-2019-0708"), &format!("bad output {n}"), t)
            .await
            .unwrap();
    }
    assert_eq!(
        claim_one("CVE-2019-0708", None, t).await,
        ClaimOne::Parked {
            attempts: 3,
            error: Some("bad output 3".into())
        }
    );
    // With a higher limit the same CVE may be tried again.
    assert!(matches!(
        s.claim_llm_one(&id("CVE-2019-0708"), None, ten, 4, t)
            .await
            .unwrap(),
        ClaimOne::Claimed(_)
    ));
}

async fn llm_failures_park_and_enrichment_resets(s: Arc<dyn Store>) {
    seed(&s).await;
    let cve = id("CVE-2024-6387");
    assert!(matches!(
        s.claim_llm_one(&cve, None, Duration::minutes(10), 3, now())
            .await
            .unwrap(),
        ClaimOne::Claimed(_)
    ));
    assert_eq!(
        s.record_llm_failure(&cve, "not JSON", now()).await.unwrap(),
        1
    );
    let r = get(&s, "CVE-2024-6387").await;
    assert_eq!(r.llm_claimed_until, None, "a failure releases the claim");
    assert_eq!(r.llm_error.as_deref(), Some("not JSON"));
    assert!(!r.llm_processed);
    assert_eq!(
        s.record_llm_failure(&cve, "too long", now()).await.unwrap(),
        2
    );
    assert!(
        cve_ids(&s.claim_llm_batch(&batch(100), now()).await.unwrap())
            .contains(&"CVE-2024-6387".to_string())
    );
    s.release_llm_claim(&cve).await.unwrap();
    // Clear every other claim too, for the parked checks below.
    for r in s.llm_candidates(None, 100).await.unwrap() {
        s.release_llm_claim(&id(&r.cve_id)).await.unwrap();
    }
    assert_eq!(
        s.record_llm_failure(&cve, "invented version", now() + Duration::minutes(1))
            .await
            .unwrap(),
        3
    );
    // Parked: never claimed by a batch again.
    assert!(
        !cve_ids(&s.claim_llm_batch(&batch(100), now()).await.unwrap())
            .contains(&"CVE-2024-6387".to_string())
    );
    // Another parked CVE, failed earlier: listed after it.
    for _ in 0..3 {
        s.record_llm_failure(&id("CVE-2024-0158"), "copy of the input", now())
            .await
            .unwrap();
    }
    let parked = s.parked_llm(LLM_MAX_ATTEMPTS, 10).await.unwrap();
    assert_eq!(cve_ids(&parked), vec!["CVE-2024-6387", "CVE-2024-0158"]);
    assert_eq!(parked[0].llm_error.as_deref(), Some("invented version"));
    assert_eq!(parked[0].llm_attempts, 3);
    assert_eq!(s.parked_llm(LLM_MAX_ATTEMPTS, 1).await.unwrap().len(), 1);
    assert!(s.parked_llm(4, 10).await.unwrap().is_empty());

    // A parked CVE whose description NVD changes gets fresh attempts at the
    // new text (the failures were about the old one).
    let mut changed = fixture("CVE-2024-0158");
    changed.description = "Dell BIOS contains an improper input validation flaw (updated).".into();
    changed.modified_at += Duration::days(1);
    s.upsert_cves(&[changed], now()).await.unwrap();
    let r = get(&s, "CVE-2024-0158").await;
    assert_eq!((r.llm_attempts, r.llm_error), (0, None));
    assert!(
        cve_ids(&s.claim_llm_batch(&batch(100), now()).await.unwrap())
            .contains(&"CVE-2024-0158".to_string())
    );
    // Re-imported unchanged: the failure history stays.
    s.upsert_cves(&[fixture("CVE-2024-6387")], now())
        .await
        .unwrap();
    assert_eq!(get(&s, "CVE-2024-6387").await.llm_attempts, 3);

    // A success ends the failure history.
    s.save_enrichment(&cve, &enrichment(now())).await.unwrap();
    let r = get(&s, "CVE-2024-6387").await;
    assert!(r.llm_processed);
    assert_eq!(r.llm_attempts, 0);
    assert_eq!(r.llm_error, None);
    assert_eq!(r.llm_claimed_until, None);
    assert!(s.parked_llm(3, 10).await.unwrap().is_empty());
    assert!(matches!(
        s.record_llm_failure(&id("CVE-2000-1234"), "x", now()).await,
        Err(StoreError::NotFound(_))
    ));
}

async fn llm_stats_numbers(s: Arc<dyn Store>) {
    let empty = s.llm_stats(now()).await.unwrap();
    assert_eq!(
        (empty.total, empty.pending, empty.completion_percentage),
        (0, 0, 0.0)
    );
    seed(&s).await;
    let high_total = s
        .llm_candidates(Some(Priority::High), 100)
        .await
        .unwrap()
        .len() as u64;
    assert_eq!(high_total, 4);
    // 8 counted (Rejected is not): 1 processed (high), 1 failed once,
    // 1 parked, 2 claimed (one of which expired by `later`... no: both held).
    s.save_enrichment(&id("CVE-2024-3400"), &enrichment(now()))
        .await
        .unwrap();
    s.record_llm_failure(&id("CVE-2024-6387"), "bad", now())
        .await
        .unwrap();
    for _ in 0..3 {
        s.record_llm_failure(&id("CVE-2024-0158"), "bad", now())
            .await
            .unwrap();
    }
    for cve in ["CVE-1999-0001", "CVE-2025-0938"] {
        s.claim_llm_one(&id(cve), None, Duration::minutes(10), 3, now())
            .await
            .unwrap();
    }
    // A claim that has expired by `now()` does not count.
    s.claim_llm_one(
        &id("CVE-2022-49267"),
        None,
        Duration::minutes(10),
        3,
        now() - Duration::hours(1),
    )
    .await
    .unwrap();
    let st = s.llm_stats(now()).await.unwrap();
    assert_eq!(st.total, 8);
    assert_eq!(st.processed, 1);
    assert_eq!(st.pending, 7);
    assert_eq!(st.high_priority_pending, high_total - 1);
    assert_eq!(st.completion_percentage, 12.5);
    assert_eq!(st.failed, 1, "failed once, still retried");
    assert_eq!(st.parked, 1);
    assert_eq!(st.claimed, 2);
    // /stats carries the same numbers.
    assert_eq!(s.stats(now()).await.unwrap().llm, st);
    // After the claims expire.
    let later = s.llm_stats(now() + Duration::hours(1)).await.unwrap();
    assert_eq!(later.claimed, 0);
}

// ------------------------------------------------- connection edge cases

#[tokio::test]
async fn unknown_scheme_is_a_clear_error_without_the_password() {
    let err = openthreat_store::connect("mysql://ot:hunter2@db/ot")
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, StoreError::InvalidUrl { .. }), "{msg}");
    assert!(msg.contains("unsupported scheme \"mysql\""), "{msg}");
    assert!(!msg.contains("hunter2"), "{msg}");
    let err = openthreat_store::connect("just-a-path.db")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no scheme"), "{err}");
}

#[tokio::test]
async fn unreachable_postgres_is_a_clear_error_without_the_password() {
    let err = openthreat_store::connect("postgres://ot:hunter2@127.0.0.1:1/ot")
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, StoreError::Connect { .. }), "{msg}");
    assert!(
        msg.starts_with(
            "cannot connect to PostgreSQL database at postgres://ot:***@127.0.0.1:1/ot"
        ),
        "{msg}"
    );
    assert!(!msg.contains("hunter2"), "{msg}");
    let err = openthreat_store::connect("postgres://ot:hunter2@[::1/ot")
        .await
        .unwrap_err();
    assert!(!err.to_string().contains("hunter2"), "{err}");
}

/// The names of the indexes a store's database holds (on SQLite, not the
/// automatic ones).
async fn index_names(url: &str) -> Vec<String> {
    if url.starts_with("sqlite") {
        let pool = sqlx::SqlitePool::connect(url).await.unwrap();
        let names = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL ORDER BY name",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        pool.close().await;
        names
    } else {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        let names = sqlx::query_scalar(
            "SELECT indexname::text FROM pg_indexes WHERE schemaname = 'public' ORDER BY indexname",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        pool.close().await;
        names
    }
}

/// `OPENTHREAT_DB_POOL_SIZE` at its minimum: a bulk load (whose index
/// builds and PostgreSQL search documents otherwise use one connection per
/// core, while a lock is held on another), search and concurrent readers
/// all finish, and PostgreSQL never sees more connections than allowed.
async fn the_smallest_pool_does_every_kind_of_work_within_its_size(url: String) {
    let size = openthreat_store::MIN_POOL_SIZE;
    let store = openthreat_store::connect_with(&url, Some(size))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let work = async {
        assert!(store.begin_bulk_load().await.unwrap());
        store.upsert_cves(&synthetic(6_000), now()).await.unwrap();
        store.upsert_cves(&fixtures(), now()).await.unwrap();
        assert_eq!(
            store.index_search().await.unwrap(),
            6_000 + fixtures().len() as u64
        );
        store.end_bulk_load().await.unwrap();
        let readers = (0..8).map(|i| {
            let store = store.clone();
            async move {
                let mut q = all();
                q.q = Some(if i % 2 == 0 { "widget" } else { "pan-os" }.into());
                q.page = 1 + i;
                store.list_cves(&q).await.unwrap().total
            }
        });
        futures::future::join_all(readers).await
    };
    let totals = tokio::time::timeout(std::time::Duration::from_secs(120), work)
        .await
        .expect("no work waits for ever on a pool of two connections");
    assert_eq!(totals[0], 6_000);
    assert_eq!(totals[1], 1);
    if !url.starts_with("sqlite") {
        let pool = sqlx::PgPool::connect(&url).await.unwrap();
        let open: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        pool.close().await;
        assert!(
            (1..=i64::from(size)).contains(&open),
            "{open} connections open"
        );
    }
}

/// `kill -9` during a bulk load leaves its indexes dropped (and on SQLite
/// its terms unwritten); the next start (migrate) completes the work.
async fn a_bulk_load_killed_half_way_is_completed_by_the_next_start(url: String) {
    let store = openthreat_store::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    let before = index_names(&url).await;
    assert!(
        before.iter().any(|n| n == "vulnerabilities_published_at"),
        "{before:?}"
    );
    assert!(store.begin_bulk_load().await.unwrap());
    let during = index_names(&url).await;
    assert!(during.len() < before.len(), "{during:?}");
    store.upsert_cves(&fixtures(), now()).await.unwrap();
    drop(store); // killed: no end_bulk_load

    let store = openthreat_store::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    assert_eq!(index_names(&url).await, before);
    assert_eq!(
        filtered(&store, |q| q.vendor = Some("paloaltonetworks".into())).await,
        ["CVE-2024-3400"]
    );
    // A load that ends normally builds them itself.
    assert!(store.begin_bulk_load().await.unwrap());
    assert!(index_names(&url).await.len() < before.len());
    store.end_bulk_load().await.unwrap();
    assert_eq!(index_names(&url).await, before);
}

/// A first import indexes its CVEs for search before its index builds
/// (PostgreSQL then defers its search index to them, see `index_search`).
/// Ended normally, the load builds them all; killed in between, the next
/// start does.
async fn a_bulk_load_killed_after_search_indexing_is_completed_by_the_next_start(url: String) {
    let cves = synthetic(11_000);
    let store = openthreat_store::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    let before = index_names(&url).await;

    assert!(store.begin_bulk_load().await.unwrap());
    store.upsert_cves(&cves[..5_000], now()).await.unwrap();
    assert_eq!(store.index_search().await.unwrap(), 5_000);
    assert!(index_names(&url).await.len() < before.len());
    store.end_bulk_load().await.unwrap();
    assert_eq!(index_names(&url).await, before);
    assert_eq!(search(&store, "12345").await, ["CVE-2030-12345"]);

    // Still small enough for a bulk load, and more new CVEs than indexed.
    assert!(store.begin_bulk_load().await.unwrap());
    store.upsert_cves(&cves[5_000..], now()).await.unwrap();
    assert_eq!(store.index_search().await.unwrap(), 6_000);
    // PostgreSQL's search index waits for the load's end with the others.
    let during = index_names(&url).await;
    assert!(
        !during.iter().any(|n| n == "vulnerability_search_document"),
        "{during:?}"
    );
    drop(store); // killed: no end_bulk_load

    let store = openthreat_store::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    assert_eq!(index_names(&url).await, before);
    assert_eq!(search(&store, "12345").await, ["CVE-2030-12345"]);
    assert_eq!(search(&store, "20789").await, ["CVE-2030-20789"]);
}

/// A process that starts while another one's first import is running (a
/// file's transaction open, the indexes dropped) starts at once, instead
/// of waiting for that file or failing after the busy timeout, and leaves
/// the indexes to the import, which builds them when it ends.
async fn a_start_during_a_bulk_load_leaves_the_indexes_to_it(url: String) {
    let loader = openthreat_store::connect(&url).await.unwrap();
    loader.migrate().await.unwrap();
    let before = index_names(&url).await;
    assert!(loader.begin_bulk_load().await.unwrap());
    let mut file = loader.begin_upserts().await.unwrap();
    file.upsert_cves(&fixtures(), now()).await.unwrap();

    let other = openthreat_store::connect(&url).await.unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(20), other.migrate())
        .await
        .expect("a start waited for the running import")
        .unwrap();
    assert!(index_names(&url).await.len() < before.len());

    file.commit().await.unwrap();
    loader.end_bulk_load().await.unwrap();
    assert_eq!(index_names(&url).await, before);
    assert_eq!(
        filtered(&other, |q| q.vendor = Some("paloaltonetworks".into())).await,
        ["CVE-2024-3400"]
    );
}

#[tokio::test]
async fn sqlite_creates_file_and_directories() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/openthreat.db");
    for url in [
        format!("sqlite:{}", path.display()),
        format!("sqlite://{}", path.display()),
    ] {
        let store = openthreat_store::connect(&url).await.unwrap();
        store.migrate().await.unwrap();
        assert_eq!(store.backend(), openthreat_store::Backend::Sqlite);
    }
    assert!(path.exists());
    let mem = openthreat_store::connect("sqlite::memory:").await.unwrap();
    mem.migrate().await.unwrap();
    mem.upsert_cves(&fixtures(), now()).await.unwrap();
    assert_eq!(mem.list_cves(&all()).await.unwrap().total, 8);
}

/// New SQLite databases get 16 KiB pages (a first import writes a quarter
/// of the pages it did with 4 KiB); a database made before that, with
/// SQLite's default 4 KiB, keeps its pages and works as before.
#[tokio::test]
async fn sqlite_page_size_new_and_existing_databases() {
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
    use sqlx::ConnectOptions;

    async fn page_size(path: &std::path::Path) -> i64 {
        let mut conn = SqliteConnectOptions::new()
            .filename(path)
            .connect()
            .await
            .unwrap();
        sqlx::query_scalar("PRAGMA page_size")
            .fetch_one(&mut conn)
            .await
            .unwrap()
    }

    let dir = tempfile::tempdir().unwrap();
    let new = dir.path().join("new.db");
    let store = openthreat_store::connect(&format!("sqlite://{}", new.display()))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    drop(store);
    assert_eq!(page_size(&new).await, 16384);

    let old = dir.path().join("old.db");
    let conn = SqliteConnectOptions::new()
        .filename(&old)
        .create_if_missing(true)
        .page_size(4096)
        .journal_mode(SqliteJournalMode::Wal)
        .connect()
        .await
        .unwrap();
    drop(conn);
    let store = openthreat_store::connect(&format!("sqlite://{}", old.display()))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    store.upsert_cves(&fixtures(), now()).await.unwrap();
    assert_eq!(store.list_cves(&all()).await.unwrap().total, 8);
    assert_eq!(search(&store, "openssh").await, ["CVE-2024-6387"]);
    drop(store);
    assert_eq!(page_size(&old).await, 4096);
}

/// PostgreSQL's search documents turn `-_./:@` into spaces (migration
/// 20261126000005 does it with replace() instead of translate(), for
/// speed): the documents must be the ones translate() gave, multibyte
/// text included, or stored documents and new ones would disagree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_search_documents_split_words_as_before() {
    harness::with_postgres_url("search_documents_split_words_as_before", |url| async move {
        let store = openthreat_store::connect(&url).await.unwrap();
        store.migrate().await.unwrap();
        let pool = sqlx::PgPool::connect(&url).await.unwrap();
        let texts = [
            "CVE-2024-3400 a_b c.d e/f g:h i@j",
            "Ünïcödé—dash 1.0.1/x_y@z: naïve-café",
            "trailing-_./:@",
            "",
        ];
        for text in texts {
            let (new, old): (String, String) = sqlx::query_as(
                "SELECT search_document($1, $1, $1, $1, $1, to_jsonb($1), to_jsonb($1))::text, \
                   (setweight(to_tsvector('english', translate($1 || ' ' || $1 || ' ' || $1, \
                      '-_./:@', '      ')), 'A') \
                    || setweight(to_tsvector('english', translate($1 || ' ' || $1, \
                      '-_./:@', '      ')), 'B') \
                    || setweight(to_tsvector('english', translate(to_jsonb($1)::text \
                      || ' ' || to_jsonb($1)::text, '-_./:@', '      ')), 'C'))::text",
            )
            .bind(text)
            .fetch_one(&pool)
            .await
            .unwrap();
            assert_eq!(new, old, "{text:?}");
        }
        // A word joined to its neighbours by each separator is found alone.
        let mut cve = fixture("CVE-2024-3400");
        cve.description = "alpha-bravo_charlie.delta/echo:foxtrot@golf".into();
        store.upsert_cves(&[cve], now()).await.unwrap();
        store.index_search().await.unwrap();
        for word in [
            "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf",
        ] {
            assert_eq!(search(&store, word).await, ["CVE-2024-3400"], "{word}");
        }
        pool.close().await;
    })
    .await;
}
