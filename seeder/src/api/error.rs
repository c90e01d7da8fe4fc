//! The API's errors: a status code and a one-line message, always as `{"error": "..."}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// An error response.
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// What went wrong and, where it helps, what to do.
    pub message: String,
}

impl ApiError {
    /// `status` with `message`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into() }
    }

    /// 400: the request is malformed.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    /// 500: the seeder failed; the message is logged, the caller gets a generic one.
    pub fn internal(error: anyhow::Error) -> ApiError {
        tracing::error!("API request failed: {error:#}");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error; the seeder's log says why")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(serde_json::json!({"error": self.message}))).into_response()
    }
}

/// Handlers' result.
pub type ApiResult<T> = Result<T, ApiError>;
