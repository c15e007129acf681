//! A static file server for the KEV catalog and EPSS files, with scripted
//! failures so retry paths can be tested.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tokio::sync::oneshot;
use url::Url;

/// One file to serve.
#[derive(Debug, Clone)]
pub struct ServedFile {
    /// URL path, e.g. `/feeds/known_exploited_vulnerabilities.json`.
    pub path: String,
    pub body: Vec<u8>,
    pub content_type: String,
}

impl ServedFile {
    pub fn new(path: impl Into<String>, body: Vec<u8>, content_type: impl Into<String>) -> Self {
        ServedFile {
            path: path.into(),
            body,
            content_type: content_type.into(),
        }
    }
}

#[derive(Debug)]
struct FileState {
    files: Vec<ServedFile>,
    fail_first: AtomicU32,
    requests: AtomicUsize,
}

/// Serves a fixed set of files; answers 503 to the first `fail_first` requests.
#[derive(Debug)]
pub struct FileServer {
    addr: SocketAddr,
    state: Arc<FileState>,
    _shutdown: oneshot::Sender<()>,
}

impl FileServer {
    pub async fn start(files: Vec<ServedFile>, fail_first: u32) -> std::io::Result<Self> {
        let state = Arc::new(FileState {
            files,
            fail_first: AtomicU32::new(fail_first),
            requests: AtomicUsize::new(0),
        });
        let app = Router::new().fallback(serve).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        Ok(FileServer {
            addr,
            state,
            _shutdown: tx,
        })
    }

    /// The URL of a served path.
    pub fn url(&self, path: &str) -> Url {
        Url::parse(&format!("http://{}{}", self.addr, path)).expect("valid test URL")
    }

    /// Requests received so far, failed ones included.
    pub fn request_count(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }
}

async fn serve(State(state): State<Arc<FileState>>, uri: Uri) -> Response {
    state.requests.fetch_add(1, Ordering::SeqCst);
    let failing = state
        .fail_first
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if failing {
        return (StatusCode::SERVICE_UNAVAILABLE, "scripted outage").into_response();
    }
    match state.files.iter().find(|f| f.path == uri.path()) {
        Some(f) => (
            [(header::CONTENT_TYPE, f.content_type.clone())],
            f.body.clone(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such file").into_response(),
    }
}
