//! HTTPS through rustls, for `--tls-cert`/`--tls-key`: the server configuration.

use std::path::Path;
use std::sync::Arc;

use tokio_rustls::TlsAcceptor;

use crate::error::ServerError;

fn load(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, ServerError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| ServerError::Io {
            path: p.display().to_string(),
            source,
        })
    };
    let certs = rustls_pemfile::certs(&mut read(cert)?.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ServerError::Tls(format!("{}: {e}", cert.display())))?;
    let key = rustls_pemfile::private_key(&mut read(key)?.as_slice())
        .map_err(|e| ServerError::Tls(format!("{}: {e}", key.display())))?
        .ok_or_else(|| ServerError::Tls(format!("{}: no private key", key.display())))?;
    rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ServerError::Tls(e.to_string()))
}

/// The TLS acceptor for `--tls-cert`/`--tls-key`; [`crate::listen::run`] bounds its handshakes.
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, ServerError> {
    Ok(TlsAcceptor::from(Arc::new(load(cert, key)?)))
}
