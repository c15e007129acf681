//! Downloading NVD feed files from the local file server.

use sha2::Digest;

use openthreat_feeds::http::RetryPolicy;
use openthreat_feeds::nvd::download::download_feed;
use openthreat_feeds::nvd::meta::FeedMeta;
use openthreat_feeds::nvd::parse::{parse_file, FileOptions};
use openthreat_feeds::testing::{fixtures_dir, FileServer, ServedFile};
use openthreat_feeds::FeedsError;

fn retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 3,
        base_delay: std::time::Duration::from_millis(10),
        max_delay: std::time::Duration::from_millis(50),
    }
}

fn feed_and_meta(gz_size_delta: i64) -> (Vec<u8>, FeedMeta) {
    let gz = std::fs::read(
        fixtures_dir().join("nvd/feeds/vuls-data-update/nvdcve-2.0-modified.json.gz"),
    )
    .unwrap();
    let mut plain = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut plain).unwrap();
    let meta = FeedMeta {
        last_modified_date: Some("2026-01-01T03:00:00-05:00".into()),
        size: Some(plain.len() as u64),
        zip_size: None,
        gz_size: Some((gz.len() as i64 + gz_size_delta) as u64),
        sha256: hex::encode_upper(sha2::Sha256::digest(&plain)),
    };
    (gz, meta)
}

#[tokio::test]
async fn downloads_once_then_uses_the_local_copy() {
    let (gz, meta) = feed_and_meta(0);
    let srv = FileServer::start(
        vec![
            ServedFile::new(
                "/feeds/nvdcve-2.0-modified.meta",
                meta.render().into_bytes(),
                "text/plain",
            ),
            ServedFile::new("/feeds/nvdcve-2.0-modified.json.gz", gz, "application/gzip"),
        ],
        1,
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let base = srv.url("/feeds/");
    let first = download_feed(&base, "nvdcve-2.0-modified", dir.path(), &retry())
        .await
        .unwrap();
    assert!(first.downloaded);
    assert_eq!(first.meta, meta);
    // The downloaded file parses and its .meta verifies.
    let summary = parse_file(&first.path, &FileOptions::default(), &mut |_| Ok(())).unwrap();
    assert_eq!(summary.parsed, 2);
    assert!(summary.meta.is_some());
    let requests = srv.request_count();
    assert_eq!(requests, 3, "one scripted 503, the .meta, the feed");

    let second = download_feed(&base, "nvdcve-2.0-modified", dir.path(), &retry())
        .await
        .unwrap();
    assert!(!second.downloaded);
    assert_eq!(
        srv.request_count(),
        requests + 1,
        "only the .meta is fetched again"
    );
}

#[tokio::test]
async fn a_short_download_is_rejected() {
    let (gz, meta) = feed_and_meta(10);
    let srv = FileServer::start(
        vec![
            ServedFile::new(
                "/nvdcve-2.0-2002.meta",
                meta.render().into_bytes(),
                "text/plain",
            ),
            ServedFile::new("/nvdcve-2.0-2002.json.gz", gz, "application/gzip"),
        ],
        0,
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let err = download_feed(&srv.url("/"), "nvdcve-2.0-2002", dir.path(), &retry())
        .await
        .unwrap_err();
    assert!(matches!(err, FeedsError::Format { .. }), "{err:?}");
    assert!(err.to_string().contains("gzSize"));
    assert!(!dir.path().join("nvdcve-2.0-2002.json.gz").exists());
    assert!(!dir.path().join("nvdcve-2.0-2002.meta").exists());
}

#[tokio::test]
async fn fixture_file_server_serves_everything_the_app_needs() {
    use openthreat_feeds::testing::{EPSS_PATH, FEEDS_PATH, KEV_PATH};
    let srv = FileServer::with_fixtures(0).await.unwrap();
    let kev = openthreat_feeds::kev::fetch_kev(&srv.url(KEV_PATH), &retry())
        .await
        .unwrap();
    assert_eq!(kev.entries.len(), 1404);
    let (summary, rows) = openthreat_feeds::epss::fetch_epss(&srv.url(EPSS_PATH), &retry())
        .await
        .unwrap();
    assert_eq!((summary.rows, rows.len()), (2, 2));
    let dir = tempfile::tempdir().unwrap();
    let mut total = 0;
    for name in ["nvdcve-2.0-2002", "nvdcve-2.0-2021", "nvdcve-2.0-modified"] {
        let d = download_feed(&srv.url(FEEDS_PATH), name, dir.path(), &retry())
            .await
            .unwrap();
        total += parse_file(&d.path, &FileOptions::default(), &mut |_| Ok(()))
            .unwrap()
            .parsed;
    }
    assert_eq!(total, 4 + 3 + 2);
}
