//! Errors: `ServerError` for startup and storage, `ApiError` for what a caller is told.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use vmattest_api::ErrorBody;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("database {url}: {source}")]
    Connect {
        url: String,
        source: Box<sqlx::Error>,
    },
    #[error("database migration: {0}")]
    Migrate(Box<sqlx::migrate::MigrateError>),
    #[error("database: {0}")]
    Db(Box<sqlx::Error>),
    #[error("database URL {0}: expected sqlite://PATH or postgres://...")]
    DbUrl(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("key {path}: {source}")]
    Key {
        path: String,
        source: Box<vmattest_sign::SignError>,
    },
    #[error("EAR key {0}")]
    EarKey(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("stored data: {0}")]
    Corrupt(String),
    #[error("the batch writer stopped")]
    WriterGone,
    #[error("randomness: {0}")]
    Random(String),
    #[error("{path}: {problem}")]
    Permissions { path: String, problem: String },
    #[error(transparent)]
    Seal(#[from] crate::secrets::SealError),
}

impl From<sqlx::Error> for ServerError {
    fn from(e: sqlx::Error) -> ServerError {
        ServerError::Db(Box::new(e))
    }
}

impl From<sqlx::migrate::MigrateError> for ServerError {
    fn from(e: sqlx::migrate::MigrateError) -> ServerError {
        ServerError::Migrate(Box::new(e))
    }
}

/// An HTTP error: status, stable code, one-line message.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(what: &str, name: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no {what} named {name:?}"),
        )
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, code, message)
    }

    pub fn unauthorized(message: &str) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
}

impl From<ServerError> for ApiError {
    fn from(e: ServerError) -> ApiError {
        tracing::error!(error = %e, "internal error");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the server log",
        )
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> ApiError {
        ApiError::from(ServerError::from(e))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            code: self.code.to_string(),
            error: self.message,
        };
        (self.status, Json(body)).into_response()
    }
}
