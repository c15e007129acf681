//! Streaming parsers for NVD JSON documents: API response pages, 2.0 feed
//! files (`.json` or `.json.gz`), a bare `cve` object, or a `{"cve": ...}`
//! wrapper. The document shape is recognised from its keys, so callers
//! never have to say which kind a file is.
//!
//! # Memory
//!
//! Each element of `vulnerabilities` is cut out as raw JSON text, mapped,
//! and handed to the caller before much more is read. Nothing holds the
//! whole array, so a 170 MB yearly feed costs one record (plus a batch) of
//! memory. Streams (files, readers) are cut by a fast scanner that follows
//! only strings and brackets (`split.rs`); in-memory pages are walked with
//! a serde [`DeserializeSeed`]. Both end in the same top-level seed, so
//! they recognise documents alike (a test compares them on every fixture).
//!
//! For files, parsing the record text into structs and mapping it runs on
//! a few worker threads ([`FileOptions::workers`]) while the calling thread
//! keeps reading; records still reach the caller in document order, on the
//! calling thread, and at most a few chunks of 64 records are in flight.
//! Broken JSON inside a record fails the document at its line and column,
//! as it would in one serde pass.
//!
//! # Failures
//!
//! * A record that is valid JSON but cannot be mapped (no id, bad date,
//!   wrong type) is a [`RecordFailure`]: handed over like a record, counted,
//!   and the document carries on.
//! * A document that is not valid JSON, is truncated, whose gzip stream
//!   breaks off, or whose `.meta` checksum does not match fails as a whole
//!   with a [`FeedsError`] naming the file and the position.
//!
//! # The batch contract ([`parse_file_batches`])
//!
//! Records are delivered in batches of at most `batch_size`. The batch with
//! `is_last == true` is delivered only after the whole file has been read,
//! the end of the JSON document checked and the `.meta` checksum (if any)
//! verified. If the file fails, the function returns the error *instead of*
//! the last batch. Batches delivered before were complete, valid records,
//! but they come from a file that turned out bad: a caller that must not
//! keep part of a bad file commits all batches of one file in one
//! transaction and commits only on `is_last` (or buffers them).

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};

use flate2::read::MultiGzDecoder;
use openthreat_core::Cve;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::error::Category;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use super::map::map_cve;
use super::meta::{meta_path_for, FeedMeta};
use super::model::{NvdCve, NvdItem};
use super::split::{Pos, ScanError, Scanner};
use crate::error::{FeedsError, RecordFailure};

/// One parsed record: the CVE, or why it was skipped.
pub type RecordResult = Result<Cve, RecordFailure>;

/// What an API page's or feed file's envelope said about itself. All
/// optional: a bare record has no envelope, and old feeds lack fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Envelope {
    pub results_per_page: Option<u64>,
    pub start_index: Option<u64>,
    pub total_results: Option<u64>,
    pub format: Option<String>,
    pub version: Option<String>,
    pub timestamp: Option<String>,
}

/// The shape a document turned out to have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocumentKind {
    /// An API response or feed file: `{..., "vulnerabilities": [{"cve": ...}]}`.
    Envelope,
    /// `{"cve": {...}}`.
    Wrapped,
    /// A bare `cve` object.
    Bare,
}

/// Counts for one document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseSummary {
    pub kind: DocumentKind,
    /// `None` unless `kind` is [`DocumentKind::Envelope`].
    pub envelope: Option<Envelope>,
    /// Records mapped successfully.
    pub parsed: usize,
    /// Records skipped as [`RecordFailure`]s.
    pub failed: usize,
    /// The `.meta` file that was verified, if one was found.
    pub meta: Option<FeedMeta>,
}

/// A fully parsed in-memory document, e.g. one API page (≤ 2000 records).
#[derive(Debug, Clone)]
pub struct ParsedPage {
    pub kind: DocumentKind,
    pub envelope: Option<Envelope>,
    pub cves: Vec<Cve>,
    pub failed: Vec<RecordFailure>,
}

/// Records handed over by [`parse_file_batches`]; see the module docs for
/// when `is_last` is set.
#[derive(Debug, Clone, Default)]
pub struct RecordBatch {
    pub cves: Vec<Cve>,
    pub failed: Vec<RecordFailure>,
    /// The file was read completely and verified; no more batches follow.
    pub is_last: bool,
}

impl RecordBatch {
    fn len(&self) -> usize {
        self.cves.len() + self.failed.len()
    }
}

/// Parses an in-memory document (an API response body) completely.
pub fn parse_page(bytes: &[u8], origin: &str) -> Result<ParsedPage, FeedsError> {
    let mut cves = Vec::new();
    let mut failed = Vec::new();
    let mut collect = |r: RecordResult| {
        match r {
            Ok(c) => cves.push(c),
            Err(f) => failed.push(f),
        }
        Ok(())
    };
    let mut ctx = Ctx::new(origin, &mut collect);
    let summary = run_top(&mut ctx, bytes, |e| FeedsError::json(origin, &e, None))?;
    Ok(ParsedPage {
        kind: summary.kind,
        envelope: summary.envelope,
        cves,
        failed,
    })
}

/// Streams records out of any reader (plain JSON; use [`parse_file`] for
/// gzip detection and `.meta` checks). `origin` names the source in errors.
pub fn parse_reader<R: Read>(
    reader: R,
    origin: &str,
    on_record: &mut dyn FnMut(RecordResult) -> Result<(), FeedsError>,
) -> Result<ParseSummary, FeedsError> {
    run_split(reader, origin, on_record, 0)
}

/// How to read a feed file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileOptions {
    /// Verify the sibling `.meta` sha256 when one exists (default `true`).
    /// Off only for files known to be edited, such as trimmed fixtures.
    pub verify_meta: bool,
    /// Records per [`RecordBatch`] (default 1000).
    pub batch_size: usize,
    /// Threads that parse and map records while this one reads; `None`
    /// picks [`default_workers`], `Some(0)` maps on the reading thread.
    pub workers: Option<usize>,
}

impl Default for FileOptions {
    fn default() -> Self {
        FileOptions {
            verify_meta: true,
            batch_size: 1000,
            workers: None,
        }
    }
}

/// Streams records out of a file: `.json` or gzip (recognised by its magic
/// bytes, whatever the name), verifying the sibling `.meta` sha256 when
/// there is one (and `opts.verify_meta`). Records are handed to
/// `on_record` in document order as soon as they are mapped; an `Err`
/// return means the file failed, whatever was handed over before.
pub fn parse_file(
    path: &Path,
    opts: &FileOptions,
    on_record: &mut dyn FnMut(RecordResult) -> Result<(), FeedsError>,
) -> Result<ParseSummary, FeedsError> {
    let origin = path.display().to_string();
    let io_err = |error| FeedsError::Io {
        path: path.to_path_buf(),
        error,
    };
    let meta_path = meta_path_for(path).filter(|_| opts.verify_meta);
    let meta = match meta_path.as_deref().filter(|p| p.is_file()) {
        Some(p) => Some(FeedMeta::read(p)?),
        None => None,
    };
    let reader = open_maybe_gzip(path).map_err(io_err)?;
    let mut tap = Tap {
        inner: reader,
        hasher: meta.as_ref().map(|_| Sha256::new()),
    };
    let summary = run_split(
        &mut tap,
        &origin,
        on_record,
        opts.workers.unwrap_or_else(default_workers),
    )?;
    if let (Some(meta), Some(meta_path)) = (&meta, meta_path) {
        // The hash covers every byte, including any trailing whitespace the
        // JSON parser did not need to look at.
        io::copy(&mut tap, &mut io::sink()).map_err(io_err)?;
        let actual = hex::encode_upper(tap.hasher.take().unwrap_or_default().finalize());
        if !actual.eq_ignore_ascii_case(&meta.sha256) {
            return Err(FeedsError::ChecksumMismatch {
                path: path.to_path_buf(),
                meta_path,
                expected: meta.sha256.clone(),
                actual,
            });
        }
    }
    Ok(ParseSummary { meta, ..summary })
}

/// Streams a file in batches; see the module docs for the contract. An
/// error returned by the callback stops the parse and is returned unchanged
/// ([`FeedsError::Stopped`] is there for callers without an error of their own).
pub fn parse_file_batches(
    path: &Path,
    opts: &FileOptions,
    on_batch: &mut dyn FnMut(RecordBatch) -> Result<(), FeedsError>,
) -> Result<ParseSummary, FeedsError> {
    let batch_size = opts.batch_size.max(1);
    let mut current = RecordBatch::default();
    let mut push = |r: RecordResult| {
        // A full batch is handed over only when the next record exists, so
        // the final batch always waits for the end-of-file checks.
        if current.len() >= batch_size {
            on_batch(std::mem::take(&mut current))?;
        }
        match r {
            Ok(c) => current.cves.push(c),
            Err(f) => current.failed.push(f),
        }
        Ok(())
    };
    let summary = parse_file(path, opts, &mut push)?;
    current.is_last = true;
    on_batch(current)?;
    Ok(summary)
}

/// Like [`parse_file_batches`], on a blocking thread, sending batches over a
/// bounded channel so an async caller can commit them while the next ones
/// are parsed. The channel ends with `Ok(batch)` where `is_last` is set, or
/// with one `Err`; the thread stops early if the receiver is dropped.
pub fn spawn_file_batches(
    path: PathBuf,
    opts: FileOptions,
    capacity: usize,
) -> tokio::sync::mpsc::Receiver<Result<RecordBatch, FeedsError>> {
    let (tx, rx) = tokio::sync::mpsc::channel(capacity.max(1));
    std::thread::spawn(move || {
        let mut send = |b: RecordBatch| {
            tx.blocking_send(Ok(b))
                .map_err(|_| FeedsError::Stopped("receiver dropped".into()))
        };
        if let Err(e) = parse_file_batches(&path, &opts, &mut send) {
            if !matches!(e, FeedsError::Stopped(_)) {
                let _ = tx.blocking_send(Err(e));
            }
        }
    });
    rx
}

/// The files an import `--from PATH` means: the file itself, or every
/// `.json` / `.json.gz` file under a directory (recursively), sorted by path
/// so imports are repeatable.
pub fn list_feed_files(path: &Path) -> Result<Vec<PathBuf>, FeedsError> {
    let io_err = |error| FeedsError::Io {
        path: path.to_path_buf(),
        error,
    };
    let meta = std::fs::metadata(path).map_err(io_err)?;
    if meta.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|error| FeedsError::Io {
            path: dir.clone(),
            error,
        })?;
        for entry in entries {
            let entry = entry.map_err(|error| FeedsError::Io {
                path: dir.clone(),
                error,
            })?;
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if name.ends_with(".json") || name.ends_with(".json.gz") {
                    out.push(p);
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Opens a file, transparently decompressing gzip (detected by the magic
/// bytes `1f 8b`, so a mis-named file still works).
fn open_maybe_gzip(path: &Path) -> io::Result<Box<dyn Read>> {
    let mut file = BufReader::with_capacity(64 * 1024, File::open(path)?);
    let head = file.fill_buf()?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(MultiGzDecoder::new(file)))
    } else {
        Ok(Box::new(file))
    }
}

/// Hashes the decompressed bytes as they are read, for the `.meta` check
/// without a second pass.
struct Tap<R> {
    inner: R,
    hasher: Option<Sha256>,
}

impl<R: Read> Read for Tap<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        Ok(n)
    }
}

/// Records sent to a mapping worker at a time: large enough to amortise
/// the channel, small enough to keep memory flat.
const CHUNK: usize = 64;

/// How many mapping threads `workers: None` means: one per spare core, at
/// most 8 (beyond that the single reading thread is the bottleneck).
pub fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get().saturating_sub(1))
        .unwrap_or(0)
        .min(8)
}

/// Runs the top-level seed over an in-memory document with `ctx` (no
/// mapping workers): a consumer's own error comes back unchanged, bad JSON
/// or an unknown shape through `bad_json`.
fn run_top(
    ctx: &mut Ctx<'_>,
    bytes: &[u8],
    bad_json: impl FnOnce(serde_json::Error) -> FeedsError,
) -> Result<ParseSummary, FeedsError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let result = TopSeed { ctx: &mut *ctx }
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|_| v));
    if let Some(stop) = ctx.stop.take() {
        return Err(stop);
    }
    let (kind, envelope) = result.map_err(bad_json)?;
    Ok(ctx.summary(kind, envelope))
}

/// Streams a document with the fast [`Scanner`]: the elements of
/// `vulnerabilities` go to the mapping workers as raw bytes; everything
/// else (the envelope, or a wrapper or bare record, which are small) is
/// collected and given to the same top-level seed as an in-memory
/// document, so both paths recognise documents alike.
fn run_split<R: Read>(
    reader: R,
    origin: &str,
    on_record: &mut dyn FnMut(RecordResult) -> Result<(), FeedsError>,
    workers: usize,
) -> Result<ParseSummary, FeedsError> {
    let mut scanner = Scanner::new(reader);
    let mut ctx = Ctx::new(origin, on_record);
    let rest = with_workers(&mut ctx, workers, |ctx| {
        let rest = split_top(&mut scanner, ctx)?;
        ctx.finish()?;
        Ok::<_, FeedsError>(rest)
    })?;
    let read = scanner.pos().offset;
    // Positions inside the collected keys are not the file's: say what
    // was wrong and how far the file was read.
    run_top(&mut ctx, &rest, |e| {
        json_error(origin, Pos::unknown_line(read), record_reason(&e))
    })
}

/// A malformed document: `message` at `at` in `origin` (line 0 when only
/// the byte offset is known).
fn json_error(origin: &str, at: Pos, message: String) -> FeedsError {
    FeedsError::Json {
        origin: origin.to_string(),
        line: at.line,
        column: at.column,
        bytes_read: Some(at.offset),
        message,
    }
}

/// Why the scanner stopped, as the document's error.
fn scan_error(origin: &str, e: ScanError) -> FeedsError {
    match e {
        ScanError::Io(error, at) => {
            json_error(origin, Pos::unknown_line(at.offset), error.to_string())
        }
        ScanError::Syntax(message, at) => json_error(origin, at, message),
    }
}

/// The envelope keys of NVD's API responses and feed files.
const ENVELOPE_KEYS: [&str; 6] = [
    "resultsPerPage",
    "startIndex",
    "totalResults",
    "format",
    "version",
    "timestamp",
];

/// Walks the top-level object: hands each element of `vulnerabilities` to
/// `ctx` and returns the document without them (`"vulnerabilities": null`
/// in their place).
fn split_top<R: Read>(scanner: &mut Scanner<R>, ctx: &mut Ctx<'_>) -> Result<Vec<u8>, FeedsError> {
    let origin = ctx.origin.clone();
    let err = |e: ScanError| scan_error(&origin, e);
    scanner
        .expect(
            b'{',
            "an NVD response/feed object, a {\"cve\": ...} wrapper or a cve object",
        )
        .map_err(err)?;
    let mut rest = b"{".to_vec();
    let mut saw_envelope = false;
    let mut other_keys: Vec<String> = Vec::new();
    if scanner.peek().map_err(err)? == Some(b'}') {
        scanner.bump();
    } else {
        loop {
            let (raw_key, at) = scanner.value().map_err(err)?;
            let key: String = serde_json::from_slice(&raw_key)
                .map_err(|_| err(ScanError::Syntax("expected a key (a string)".into(), at)))?;
            scanner.expect(b':', "`:`").map_err(err)?;
            if rest.len() > 1 {
                rest.push(b',');
            }
            rest.extend_from_slice(&raw_key);
            rest.push(b':');
            if key == "vulnerabilities" && scanner.peek().map_err(err)? == Some(b'[') {
                if !saw_envelope && !other_keys.is_empty() {
                    // The same refusal as the seed's, before any element.
                    let keys: Vec<&str> = other_keys.iter().take(6).map(String::as_str).collect();
                    return Err(json_error(
                        &origin,
                        at,
                        format!(
                            "not an NVD document: \"vulnerabilities\" without NVD's envelope keys (found {keys:?})"
                        ),
                    ));
                }
                saw_envelope = true;
                scanner.bump();
                rest.extend_from_slice(b"null");
                split_elements(scanner, ctx).map_err(|e| match e {
                    Split::Scan(e) => err(e),
                    Split::Feeds(e) => e,
                })?;
            } else {
                if ENVELOPE_KEYS.contains(&key.as_str()) {
                    saw_envelope = true;
                } else if !(key == "cve" && other_keys.is_empty() && !saw_envelope) {
                    other_keys.push(key);
                }
                let (raw, _) = scanner.value().map_err(err)?;
                rest.extend_from_slice(&raw);
            }
            match scanner.peek().map_err(err)? {
                Some(b',') => scanner.bump(),
                Some(b'}') => {
                    scanner.bump();
                    break;
                }
                found => return Err(err(scanner.unexpected(found, "`,` or `}`"))),
            }
        }
    }
    rest.push(b'}');
    match scanner.peek().map_err(err)? {
        None => Ok(rest),
        found => Err(err(scanner.unexpected(found, "the end of the document"))),
    }
}

/// Why reading the elements stopped.
enum Split {
    Scan(ScanError),
    Feeds(FeedsError),
}

/// The elements of `vulnerabilities`, after its `[`, up to its `]`.
fn split_elements<R: Read>(scanner: &mut Scanner<R>, ctx: &mut Ctx<'_>) -> Result<(), Split> {
    if scanner.peek().map_err(Split::Scan)? == Some(b']') {
        scanner.bump();
        return Ok(());
    }
    loop {
        let (bytes, at) = scanner.value().map_err(Split::Scan)?;
        ctx.push_item(Raw {
            bytes,
            at: Some(at),
        })
        .map_err(Split::Feeds)?;
        match scanner.peek().map_err(Split::Scan)? {
            Some(b',') => scanner.bump(),
            Some(b']') => {
                scanner.bump();
                return Ok(());
            }
            found => return Err(Split::Scan(scanner.unexpected(found, "`,` or `]`"))),
        }
    }
}

/// Runs `body` with `workers` mapping threads attached to `ctx` (none for
/// 0); they are joined before this returns, also after an error.
fn with_workers<T>(ctx: &mut Ctx<'_>, workers: usize, body: impl FnOnce(&mut Ctx<'_>) -> T) -> T {
    if workers == 0 {
        return body(ctx);
    }
    std::thread::scope(|scope| {
        let (job_tx, job_rx) = mpsc::sync_channel::<Job>(workers * 2);
        let (res_tx, res_rx) = mpsc::channel::<(u64, Vec<Mapped>)>();
        let job_rx = Arc::new(Mutex::new(job_rx));
        for _ in 0..workers {
            let job_rx = Arc::clone(&job_rx);
            let res_tx = res_tx.clone();
            scope.spawn(move || loop {
                let job = match job_rx.lock() {
                    Ok(rx) => rx.recv(),
                    Err(_) => return,
                };
                let Ok((seq, first, raws)) = job else { return };
                let results = raws
                    .iter()
                    .enumerate()
                    .map(|(i, raw)| map_item(&raw.bytes, raw.at, first + i))
                    .collect();
                if res_tx.send((seq, results)).is_err() {
                    return;
                }
            });
        }
        drop(res_tx);
        ctx.pool = Some(Pool {
            jobs: Some(job_tx),
            results: res_rx,
            chunk: Vec::with_capacity(CHUNK),
            chunk_first: 0,
            sent: 0,
            next_emit: 0,
            pending: BTreeMap::new(),
        });
        let out = body(ctx);
        // Dropping the pool closes the job channel: the workers exit and
        // the scope joins them.
        ctx.pool = None;
        out
    })
}

/// One element of `vulnerabilities` as its text, and where it starts in
/// the document.
struct Raw {
    bytes: Vec<u8>,
    at: Option<Pos>,
}

/// What a mapping worker made of one element. Almost every one is a
/// record, so boxing the large variant would only add an allocation each.
#[allow(clippy::large_enum_variant)]
enum Mapped {
    Record(RecordResult),
    /// Not JSON: the whole document is malformed here.
    Broken {
        message: String,
        at: Pos,
    },
}

/// A chunk of raw records: sequence number, index of the first record.
type Job = (u64, usize, Vec<Raw>);

/// The reading side of the mapping workers.
struct Pool {
    jobs: Option<mpsc::SyncSender<Job>>,
    results: mpsc::Receiver<(u64, Vec<Mapped>)>,
    chunk: Vec<Raw>,
    chunk_first: usize,
    /// Chunks sent so far; the next chunk's sequence number.
    sent: u64,
    /// Sequence number of the next chunk to hand to the consumer.
    next_emit: u64,
    /// Chunks that came back ahead of their turn.
    pending: BTreeMap<u64, Vec<Mapped>>,
}

/// State shared by the visitors: the consumer and the counters.
struct Ctx<'c> {
    origin: String,
    on_record: &'c mut dyn FnMut(RecordResult) -> Result<(), FeedsError>,
    index: usize,
    parsed: usize,
    failed: usize,
    /// The consumer's error, kept aside so it is not reported as bad JSON.
    stop: Option<FeedsError>,
    pool: Option<Pool>,
}

/// Parses and maps one element of `vulnerabilities` (`{"cve": {...}}`).
/// Broken JSON is the document's fault, not the record's.
fn map_item(bytes: &[u8], at: Option<Pos>, index: usize) -> Mapped {
    match serde_json::from_slice::<NvdItem>(bytes) {
        Ok(item) => Mapped::Record(map_one(item.cve, index)),
        Err(e) if matches!(e.classify(), Category::Syntax | Category::Eof) => Mapped::Broken {
            message: record_reason(&e),
            at: at.unwrap_or_default().inner(e.line(), e.column()),
        },
        Err(e) => Mapped::Record(Err(RecordFailure {
            cve_id: std::str::from_utf8(bytes)
                .ok()
                .and_then(|text| probe_id(text, true)),
            index,
            reason: record_reason(&e),
        })),
    }
}

fn map_one(nvd: NvdCve, index: usize) -> RecordResult {
    map_cve(nvd).map_err(|e| RecordFailure {
        cve_id: Some(e.cve_id),
        index,
        reason: e.message,
    })
}

impl<'c> Ctx<'c> {
    fn new(
        origin: &str,
        on_record: &'c mut dyn FnMut(RecordResult) -> Result<(), FeedsError>,
    ) -> Self {
        Ctx {
            origin: origin.to_string(),
            on_record,
            index: 0,
            parsed: 0,
            failed: 0,
            stop: None,
            pool: None,
        }
    }

    fn summary(&self, kind: DocumentKind, envelope: Option<Envelope>) -> ParseSummary {
        ParseSummary {
            kind,
            envelope,
            parsed: self.parsed,
            failed: self.failed,
            meta: None,
        }
    }

    /// Hands a mapped element over, or fails the document where its JSON
    /// is broken.
    fn deliver_mapped(&mut self, mapped: Mapped) -> Result<(), FeedsError> {
        match mapped {
            Mapped::Record(r) => self.deliver(r),
            Mapped::Broken { message, at } => Err(json_error(&self.origin, at, message)),
        }
    }

    /// Counts a result and hands it to the consumer.
    fn deliver(&mut self, result: RecordResult) -> Result<(), FeedsError> {
        match &result {
            Ok(_) => self.parsed += 1,
            Err(f) => {
                self.failed += 1;
                tracing::warn!(record = %f, "skipping NVD record that cannot be mapped");
            }
        }
        (self.on_record)(result)
    }

    /// Turns a consumer error into a serde error that ends the parse.
    fn stopped<E: de::Error>(&mut self, r: Result<(), FeedsError>) -> Result<(), E> {
        r.map_err(|e| {
            self.stop = Some(e);
            E::custom("stopped by the consumer")
        })
    }

    /// An element of `vulnerabilities` from serde, as raw text.
    /// The serde path has no mapping workers: the element is mapped here,
    /// from the document's own bytes.
    fn item<E: de::Error>(&mut self, raw: &RawValue) -> Result<(), E> {
        let r = self.map_here(raw.get().as_bytes(), None);
        self.stopped(r)
    }

    /// Maps an element on this thread and hands it over.
    fn map_here(&mut self, bytes: &[u8], at: Option<Pos>) -> Result<(), FeedsError> {
        let index = self.index;
        self.index += 1;
        self.deliver_mapped(map_item(bytes, at, index))
    }

    /// Maps an element here, or queues it for the workers.
    fn push_item(&mut self, raw: Raw) -> Result<(), FeedsError> {
        let Some(pool) = &mut self.pool else {
            return self.map_here(&raw.bytes, raw.at);
        };
        if pool.chunk.is_empty() {
            pool.chunk_first = self.index;
        }
        self.index += 1;
        pool.chunk.push(raw);
        if pool.chunk.len() >= CHUNK {
            self.send_chunk()?;
            self.drain(false)?;
        }
        Ok(())
    }

    /// The object under a top-level `cve` key.
    fn wrapped<E: de::Error>(&mut self, raw: &RawValue) -> Result<(), E> {
        let index = self.index;
        self.index += 1;
        let r = match serde_json::from_str::<NvdCve>(raw.get()) {
            Ok(nvd) => map_one(nvd, index),
            Err(e) => Err(RecordFailure {
                cve_id: probe_id(raw.get(), false),
                index,
                reason: record_reason(&e),
            }),
        };
        let r = self.deliver(r);
        self.stopped(r)
    }

    /// A bare cve object, already collected as a JSON value.
    fn bare<E: de::Error>(&mut self, value: serde_json::Value) -> Result<(), E> {
        let index = self.index;
        self.index += 1;
        let id = value.get("id").map(|v| match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        });
        let r = match serde_json::from_value::<NvdCve>(value) {
            Ok(nvd) => map_one(nvd, index),
            Err(e) => Err(RecordFailure {
                cve_id: id,
                index,
                reason: record_reason(&e),
            }),
        };
        let r = self.deliver(r);
        self.stopped(r)
    }

    fn send_chunk(&mut self) -> Result<(), FeedsError> {
        let Some(pool) = &mut self.pool else {
            return Ok(());
        };
        if pool.chunk.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut pool.chunk, Vec::with_capacity(CHUNK));
        let Some(jobs) = &pool.jobs else {
            return Err(FeedsError::Join("mapping workers already stopped".into()));
        };
        jobs.send((pool.sent, pool.chunk_first, chunk))
            .map_err(|_| FeedsError::Join("mapping workers stopped".into()))?;
        pool.sent += 1;
        Ok(())
    }

    /// Hands finished chunks to the consumer in document order; with
    /// `wait`, blocks until every sent chunk has been handed over.
    fn drain(&mut self, wait: bool) -> Result<(), FeedsError> {
        loop {
            let ready = match &mut self.pool {
                None => return Ok(()),
                Some(pool) => {
                    let next = pool.next_emit;
                    match pool.pending.remove(&next) {
                        Some(results) => {
                            pool.next_emit += 1;
                            Some(results)
                        }
                        None if pool.next_emit == pool.sent => return Ok(()),
                        None => {
                            let msg = if wait {
                                pool.results.recv().ok()
                            } else {
                                pool.results.try_recv().ok()
                            };
                            match msg {
                                Some((seq, results)) => {
                                    pool.pending.insert(seq, results);
                                }
                                None if wait => {
                                    return Err(FeedsError::Join(
                                        "a mapping worker stopped unexpectedly".into(),
                                    ))
                                }
                                None => return Ok(()),
                            }
                            None
                        }
                    }
                }
            };
            for r in ready.into_iter().flatten() {
                self.deliver_mapped(r)?;
            }
        }
    }

    /// End of a good document: map what is left and hand everything over.
    fn finish(&mut self) -> Result<(), FeedsError> {
        self.send_chunk()?;
        if let Some(pool) = &mut self.pool {
            pool.jobs = None;
        }
        self.drain(true)
    }
}

/// A serde error inside one record, without the misleading line/column of
/// the record's own text.
fn record_reason(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// Best-effort id of a record that failed to deserialize, so the failure
/// can name it.
fn probe_id(text: &str, wrapped: bool) -> Option<String> {
    #[derive(Deserialize)]
    struct Id {
        id: Option<serde_json::Value>,
    }
    #[derive(Deserialize)]
    struct Wrapper {
        cve: Option<Id>,
    }
    let id = if wrapped {
        serde_json::from_str::<Wrapper>(text).ok()?.cve?.id?
    } else {
        serde_json::from_str::<Id>(text).ok()?.id?
    };
    match id {
        serde_json::Value::String(s) => Some(s),
        other => Some(other.to_string()),
    }
}

struct TopSeed<'a, 'c> {
    ctx: &'a mut Ctx<'c>,
}

impl<'de> DeserializeSeed<'de> for TopSeed<'_, '_> {
    type Value = (DocumentKind, Option<Envelope>);
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for TopSeed<'_, '_> {
    type Value = (DocumentKind, Option<Envelope>);

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an NVD response/feed object, a {\"cve\": ...} wrapper or a cve object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut env = Envelope::default();
        let mut saw_envelope = false;
        let mut saw_wrapper = false;
        // Keys of a bare cve object are collected; a cve object is small.
        let mut bare = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "vulnerabilities" => {
                    if !saw_envelope && !bare.is_empty() {
                        // Other keys first and none of NVD's: some other
                        // catalog with a `vulnerabilities` array (CISA KEV).
                        let keys: Vec<&str> = bare.keys().take(6).map(String::as_str).collect();
                        return Err(de::Error::custom(format!(
                            "not an NVD document: \"vulnerabilities\" without NVD's envelope keys (found {keys:?})"
                        )));
                    }
                    saw_envelope = true;
                    map.next_value_seed(VulnsSeed { ctx: self.ctx })?;
                }
                "resultsPerPage" => {
                    saw_envelope = true;
                    env.results_per_page = map.next_value()?;
                }
                "startIndex" => {
                    saw_envelope = true;
                    env.start_index = map.next_value()?;
                }
                "totalResults" => {
                    saw_envelope = true;
                    env.total_results = map.next_value()?;
                }
                "format" => {
                    saw_envelope = true;
                    env.format = map.next_value()?;
                }
                "version" => {
                    saw_envelope = true;
                    env.version = map.next_value()?;
                }
                "timestamp" => {
                    saw_envelope = true;
                    env.timestamp = map.next_value()?;
                }
                "cve" if bare.is_empty() && !saw_envelope => {
                    saw_wrapper = true;
                    let raw: Box<RawValue> = map.next_value()?;
                    self.ctx.wrapped(&raw)?;
                }
                _ if saw_envelope || saw_wrapper => {
                    map.next_value::<IgnoredAny>()?;
                }
                _ => {
                    let v: serde_json::Value = map.next_value()?;
                    bare.insert(key, v);
                }
            }
        }
        if saw_envelope {
            return Ok((DocumentKind::Envelope, Some(env)));
        }
        if saw_wrapper {
            return Ok((DocumentKind::Wrapped, None));
        }
        if !bare.contains_key("id") {
            // Not a record with a bad field but another kind of document
            // (a KEV catalog, a CVE 5 record, ...): fail the file clearly.
            let keys: Vec<&str> = bare.keys().take(6).map(String::as_str).collect();
            return Err(de::Error::custom(format!(
                "not an NVD document: no \"vulnerabilities\", \"cve\" or \"id\" key (found {keys:?})"
            )));
        }
        self.ctx.bare(serde_json::Value::Object(bare))?;
        Ok((DocumentKind::Bare, None))
    }
}

struct VulnsSeed<'a, 'c> {
    ctx: &'a mut Ctx<'c>,
}

impl<'de> DeserializeSeed<'de> for VulnsSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for VulnsSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of {\"cve\": ...} objects")
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(raw) = seq.next_element::<Box<RawValue>>()? {
            self.ctx.item(&raw)?;
        }
        Ok(())
    }
}

impl fmt::Display for DocumentKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DocumentKind::Envelope => "envelope",
            DocumentKind::Wrapped => "wrapped cve",
            DocumentKind::Bare => "bare cve",
        })
    }
}
