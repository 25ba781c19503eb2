//! Errors: `ServerError` for startup and storage, `ApiError` for what a caller is told.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use vmattest_api::{ErrorBody, ErrorCode};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("database {url}")]
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
    #[error("{path}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("key {path}")]
    Key {
        path: String,
        source: Box<vmattest_sign::SignError>,
    },
    #[error("EAR key {0}")]
    EarKey(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("listen on {addr}")]
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

/// An HTTP error: a stable code (which fixes the status) and a one-line message.
#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.code.status()).unwrap_or(StatusCode::BAD_REQUEST)
    }

    pub fn not_found(what: &str, name: &str) -> ApiError {
        ApiError::new(ErrorCode::NotFound, format!("no {what} named {name:?}"))
    }

    pub fn unauthorized(message: &str) -> ApiError {
        ApiError::new(ErrorCode::Unauthorized, message)
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::Forbidden, message)
    }
}

impl From<ServerError> for ApiError {
    fn from(e: ServerError) -> ApiError {
        tracing::error!(error = %e, "internal error");
        ApiError::new(ErrorCode::Internal, "internal error; see the server log")
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> ApiError {
        ApiError::from(ServerError::from(e))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = ErrorBody {
            code: self.code,
            error: self.message,
        };
        (status, Json(body)).into_response()
    }
}
