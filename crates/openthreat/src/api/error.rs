//! The one error type of the HTTP layer, and extractors that produce it.
//!
//! Every failure leaves as FastAPI's shape, `{"detail": "...", "code": "..."}`,
//! because the original's clients read `detail`; `code` is ours, stable and
//! machine-readable. Client errors say precisely which parameter is wrong.
//! Server errors say nothing about the cause: the cause goes to the log, and
//! the body carries the request id that the log line also shows, so an
//! operator can find one from the other (see [`finish_server_errors`]).

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;
use utoipa::ToSchema;

/// An error answer: status, stable code and a message for humans.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    detail: String,
    /// What really went wrong, for the log; never sent to the client.
    internal: Option<String>,
}

/// The JSON body of every error answer (documented in the OpenAPI document).
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for humans (FastAPI's key).
    pub detail: String,
    /// Stable machine-readable code, e.g. `invalid_parameter`, `not_found`.
    pub code: String,
    /// Present on 5xx answers: quote it when reporting the problem.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// Marker left in a 5xx response so [`finish_server_errors`] can log the cause
/// next to the request id and put the id in the body.
#[derive(Debug, Clone)]
struct ServerErrorCause(String);

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            detail: detail.into(),
            internal: None,
        }
    }

    /// 422: a parameter is malformed or out of range; `param` is named first.
    pub fn invalid(param: &str, problem: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_parameter",
            format!("{param}: {problem}"),
        )
    }

    /// 400: the request as a whole makes no sense (the original used 400 here).
    pub fn bad_request(param: &str, problem: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("{param}: {problem}"),
        )
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", detail)
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
    }

    /// 503 for a part of the system that is not configured or not reachable.
    /// The detail is shown, so it must name the part, not its address.
    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", detail)
    }

    /// 500 with the cause kept for the log only.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            detail: "internal server error".into(),
            internal: Some(cause.to_string()),
        }
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl From<openthreat_store::StoreError> for ApiError {
    fn from(e: openthreat_store::StoreError) -> Self {
        use openthreat_store::StoreError;
        match e {
            // The HTTP layer validates first, so these are rare; when they do
            // happen the store's message names the parameter and is safe to show.
            StoreError::InvalidInput(msg) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_parameter", msg)
            }
            StoreError::NotFound(what) => ApiError::not_found(format!("{what} not found")),
            // Everything else may carry SQL, host names or URLs: log only.
            other => ApiError::internal(other),
        }
    }
}

impl From<super::tasks::GatewayError> for ApiError {
    fn from(e: super::tasks::GatewayError) -> Self {
        match e {
            super::tasks::GatewayError::Unavailable(cause) => {
                let mut err = ApiError::unavailable("the task queue is not reachable");
                err.internal = Some(cause);
                err
            }
            other => ApiError::internal(other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            detail: self.detail,
            code: self.code.to_string(),
            request_id: None,
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status.is_server_error() {
            response.extensions_mut().insert(ServerErrorCause(
                self.internal.unwrap_or_else(|| "no cause recorded".into()),
            ));
        }
        response
    }
}

/// Middleware: logs the cause of every 5xx answer with its request id and
/// rewrites the body to carry that id (and nothing else about the cause).
///
/// Runs inside the request-id layer, so `x-request-id` is always present.
pub async fn finish_server_errors(request: Request, next: Next) -> Response {
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let response = next.run(request).await;
    if !response.status().is_server_error() {
        return response;
    }
    let status = response.status();
    let Some(cause) = response.extensions().get::<ServerErrorCause>().cloned() else {
        // A 5xx built by hand (e.g. /health's 503) already chose a safe body.
        tracing::warn!(request_id = %request_id, %method, path = %path, status = status.as_u16(), "request answered with a server error");
        return response;
    };
    let (code, detail) = if status == StatusCode::SERVICE_UNAVAILABLE {
        ("unavailable", None)
    } else {
        ("internal", Some("internal server error"))
    };
    tracing::error!(
        request_id = %request_id,
        %method,
        path = %path,
        status = status.as_u16(),
        cause = cause.0.as_str(),
        "request failed"
    );
    // A 503 keeps its (safe, hand-written) detail; every other 5xx body is replaced.
    let detail = match detail {
        Some(d) => d.to_string(),
        None => {
            let bytes = axum::body::to_bytes(response.into_body(), 64 * 1024)
                .await
                .unwrap_or_default();
            serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("detail").and_then(|d| d.as_str()).map(String::from))
                .unwrap_or_else(|| "service unavailable".into())
        }
    };
    let body = ErrorBody {
        detail,
        code: code.into(),
        request_id: Some(request_id.clone()),
    };
    let mut response = (status, axum::Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", v);
    }
    response
}

/// `Query<T>` whose failures are [`ApiError`]s naming the parameter.
///
/// axum reports deserialisation errors with the field's path
/// (`page_size: invalid digit found in string`), which we pass on as 422.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(ApiQuery(v)),
            Err(QueryRejection::FailedToDeserializeQueryString(e)) => {
                let text = e.body_text();
                let text = text
                    .strip_prefix("Failed to deserialize query string: ")
                    .unwrap_or(&text);
                Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_parameter",
                    text.to_string(),
                ))
            }
            Err(other) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                other.body_text(),
            )),
        }
    }
}

/// `Path<T>` whose failures are [`ApiError`]s naming the path parameter.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiPath<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(ApiPath(v)),
            Err(PathRejection::FailedToDeserializePathParams(e)) => Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_parameter",
                e.body_text(),
            )),
            Err(other) => Err(ApiError::internal(other.body_text())),
        }
    }
}
