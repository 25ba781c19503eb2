//! A small HTTP/1.1 JSON client for the server's API (plain HTTP: loopback benchmarks only).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde::de::DeserializeOwned;
use vmattest_api::{API_PREFIX, ErrorBody, MAX_BODY_BYTES};

/// Why a call failed; [`CallError::kind`] is what the report counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// Connecting, sending or reading failed.
    Transport(String),
    Timeout,
    /// The server answered with a non-2xx status (and an API error code, if it sent one).
    Status {
        status: u16,
        code: String,
        message: String,
    },
    /// The response was not the expected JSON.
    Decode(String),
}

impl CallError {
    /// A short, bounded label: `http 409 no_baseline`, `transport`, `timeout`, `decode`.
    pub fn kind(&self) -> String {
        match self {
            CallError::Transport(_) => "transport".into(),
            CallError::Timeout => "timeout".into(),
            CallError::Status { status, code, .. } if code.is_empty() => format!("http {status}"),
            CallError::Status { status, code, .. } => format!("http {status} {code}"),
            CallError::Decode(_) => "decode".into(),
        }
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Transport(e) => write!(f, "transport: {e}"),
            CallError::Timeout => write!(f, "timed out"),
            CallError::Status {
                status,
                code,
                message,
            } => write!(f, "HTTP {status} {code}: {message}"),
            CallError::Decode(e) => write!(f, "bad response: {e}"),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Api {
    client: Client<HttpConnector, Full<Bytes>>,
    /// `http://host:port`, without a trailing slash.
    base: String,
    timeout: Duration,
}

impl Api {
    /// `server` must be a plain `http://` URL.
    pub fn new(server: &str, pool: usize, timeout: Duration) -> Result<Api, String> {
        let base = server.trim_end_matches('/').to_string();
        let uri: Uri = base
            .parse()
            .map_err(|e| format!("--server {server:?}: {e}"))?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(format!(
                "--server {server:?}: expected http://HOST:PORT (the load generator speaks plain \
                 HTTP, for loopback benchmarks)"
            ));
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(pool)
            .build(connector);
        Ok(Api {
            client,
            base,
            timeout,
        })
    }

    /// One request; the response body of a 2xx answer.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<(&'static str, Vec<u8>)>,
    ) -> Result<Bytes, CallError> {
        let uri = format!("{}{API_PREFIX}{path}", self.base);
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header(AUTHORIZATION, format!("Bearer {t}"));
        }
        let body = match body {
            Some((content_type, bytes)) => {
                req = req.header(CONTENT_TYPE, content_type);
                Full::new(Bytes::from(bytes))
            }
            None => Full::new(Bytes::new()),
        };
        let req = req
            .body(body)
            .map_err(|e| CallError::Transport(e.to_string()))?;
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| CallError::Transport(e.to_string()))?;
            let status = resp.status();
            let bytes = Limited::new(resp.into_body(), MAX_BODY_BYTES)
                .collect()
                .await
                .map_err(|e| CallError::Transport(e.to_string()))?
                .to_bytes();
            if status.is_success() {
                return Ok(bytes);
            }
            let (code, message) = match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(e) => (e.code.to_string(), e.error),
                Err(_) => (
                    String::new(),
                    String::from_utf8_lossy(&bytes).chars().take(200).collect(),
                ),
            };
            Err(CallError::Status {
                status: status.as_u16(),
                code,
                message,
            })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| CallError::Timeout)?
    }

    pub async fn get<R: DeserializeOwned>(
        &self,
        path: &str,
        token: Option<&str>,
    ) -> Result<R, CallError> {
        decode(&self.call(Method::GET, path, token, None).await?)
    }

    pub async fn post_json<B: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        token: &str,
        body: &B,
    ) -> Result<R, CallError> {
        let bytes = serde_json::to_vec(body).map_err(|e| CallError::Decode(e.to_string()))?;
        decode(
            &self
                .call(
                    Method::POST,
                    path,
                    Some(token),
                    Some(("application/json", bytes)),
                )
                .await?,
        )
    }

    /// A POST with no body (a challenge).
    pub async fn post_empty<R: DeserializeOwned>(
        &self,
        path: &str,
        token: &str,
    ) -> Result<R, CallError> {
        decode(&self.call(Method::POST, path, Some(token), None).await?)
    }

    pub async fn post_bytes<R: DeserializeOwned>(
        &self,
        path: &str,
        token: &str,
        bytes: Vec<u8>,
    ) -> Result<R, CallError> {
        decode(
            &self
                .call(
                    Method::POST,
                    path,
                    Some(token),
                    Some(("application/octet-stream", bytes)),
                )
                .await?,
        )
    }
}

fn decode<R: DeserializeOwned>(bytes: &[u8]) -> Result<R, CallError> {
    serde_json::from_slice(bytes).map_err(|e| CallError::Decode(e.to_string()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn error_kinds_are_short_labels() {
        let e = CallError::Status {
            status: 409,
            code: "no_baseline".into(),
            message: "the VM has no baseline".into(),
        };
        assert_eq!(e.kind(), "http 409 no_baseline");
        let e = CallError::Status {
            status: 502,
            code: String::new(),
            message: "bad gateway".into(),
        };
        assert_eq!(e.kind(), "http 502");
        assert_eq!(CallError::Timeout.kind(), "timeout");
        assert_eq!(CallError::Transport("refused".into()).kind(), "transport");
    }

    #[test]
    fn only_plain_http_servers() {
        let t = Duration::from_secs(1);
        assert!(Api::new("https://127.0.0.1:8443", 1, t).is_err());
        assert!(Api::new("127.0.0.1:8080", 1, t).is_err());
        assert!(Api::new("http://127.0.0.1:8080/", 1, t).is_ok());
    }

    #[tokio::test]
    async fn refused_connection_is_a_transport_error() {
        // A port that was free a moment ago: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let api = Api::new(
            &format!("http://127.0.0.1:{port}"),
            1,
            Duration::from_secs(5),
        )
        .unwrap();
        let e = api
            .get::<vmattest_api::Health>("/health", None)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), "transport", "{e}");
    }
}
