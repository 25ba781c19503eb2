//! [`Client::connect`]: a client from a server URL, a token file and a CA certificate file.

use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use vmattest_core::class::{Classify, ErrorClass};
use vmattest_core::limit::read_to_cap;

use crate::{Client, ClientError};

/// Largest token file read: a token is one short line.
const MAX_TOKEN_FILE: u64 = 64 * 1024;
/// Largest CA certificate file read.
const MAX_CA_FILE: u64 = 1 << 20;

/// What a front end is given to reach the server.
#[derive(Clone, Copy, Debug, Default)]
pub struct Connect<'a> {
    /// `http://HOST[:PORT]` or `https://HOST[:PORT]`; required.
    pub server: Option<&'a str>,
    /// A file holding the bearer token on one line; none for the public endpoints.
    pub token_file: Option<&'a Path>,
    /// PEM CA certificates to trust alone for TLS, instead of the web PKI roots.
    pub ca_cert: Option<&'a Path>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("no server URL given")]
    NoServer,
    #[error("{}: cannot read the {what}", path.display())]
    Read {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: expected a {what} of at most {max} bytes", path.display())]
    TooLarge {
        path: PathBuf,
        what: &'static str,
        max: u64,
    },
    #[error("{}: expected a regular file holding the {what}", path.display())]
    NotAFile { path: PathBuf, what: &'static str },
    #[error("{}: expected a {what} on one line of UTF-8", path.display())]
    NotOneLine { path: PathBuf, what: &'static str },
    /// The CA file was read but holds no usable certificate.
    #[error("{}", path.display())]
    Ca {
        path: PathBuf,
        #[source]
        source: ClientError,
    },
    #[error(transparent)]
    Client(#[from] ClientError),
}

impl Classify for ConnectError {
    fn class(&self) -> ErrorClass {
        match self {
            ConnectError::Read { source, .. } if source.kind() != std::io::ErrorKind::NotFound => {
                ErrorClass::Environment
            }
            ConnectError::Client(e) | ConnectError::Ca { source: e, .. } => e.class(),
            ConnectError::NoServer
            | ConnectError::Read { .. }
            | ConnectError::TooLarge { .. }
            | ConnectError::NotOneLine { .. }
            | ConnectError::NotAFile { .. } => ErrorClass::Input,
        }
    }
}

/// Reads at most `max` bytes of `path`; one byte more is refused rather than cut.
fn read_capped(path: &Path, max: u64, what: &'static str) -> Result<Vec<u8>, ConnectError> {
    let read = |source| ConnectError::Read {
        path: path.to_owned(),
        what,
        source,
    };
    // Never blocks on a FIFO or a device: opened non-blocking, then type-checked.
    let file = std::fs::File::options()
        .read(true)
        .custom_flags(libc_nonblock())
        .open(path)
        .map_err(read)?;
    if !file.metadata().map_err(read)?.is_file() {
        return Err(ConnectError::NotAFile {
            path: path.to_owned(),
            what,
        });
    }
    let len = file.metadata().map_err(read)?.len();
    read_to_cap(file, max, len)
        .map_err(read)?
        .ok_or_else(|| ConnectError::TooLarge {
            path: path.to_owned(),
            what,
            max,
        })
}

/// `O_NONBLOCK`, for opening a file the user named without waiting on a FIFO's writer.
fn libc_nonblock() -> i32 {
    // The flag's value fits an i32 on every Linux architecture.
    i32::try_from(rustix::fs::OFlags::NONBLOCK.bits()).unwrap_or(0o4000)
}

/// The one line of a token file, without surrounding white space.
fn read_token(path: &Path) -> Result<String, ConnectError> {
    let what = "token";
    let bytes = read_capped(path, MAX_TOKEN_FILE, what)?;
    let not_one_line = || ConnectError::NotOneLine {
        path: path.to_owned(),
        what,
    };
    let text = String::from_utf8(bytes).map_err(|_| not_one_line())?;
    let line = text.trim();
    if line.is_empty() || line.contains(['\n', '\r']) {
        return Err(not_one_line());
    }
    Ok(line.to_owned())
}

impl Client {
    /// A client for `c.server` with the token of `c.token_file`, trusting only `c.ca_cert`
    /// for TLS when given. Files are read here, so a bad one fails before any request.
    pub fn connect(c: &Connect<'_>) -> Result<Client, ConnectError> {
        let server = c.server.ok_or(ConnectError::NoServer)?;
        let token = c.token_file.map(read_token).transpose()?;
        match c.ca_cert {
            Some(path) => {
                let pem = read_capped(path, MAX_CA_FILE, "CA certificate")?;
                Client::with_ca(server, token, &pem).map_err(|source| match source {
                    ClientError::Ca(_) => ConnectError::Ca {
                        path: path.to_owned(),
                        source,
                    },
                    other => ConnectError::Client(other),
                })
            }
            None => Ok(Client::new(server, token)?),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn reads_a_one_line_token() {
        let dir = tempfile::tempdir().unwrap();
        let token = file(dir.path(), "token", b"vmat_abc\n");
        let c = Client::connect(&Connect {
            server: Some("http://127.0.0.1:1"),
            token_file: Some(&token),
            ca_cert: None,
        })
        .unwrap();
        assert_eq!(c.base(), "http://127.0.0.1:1");
        assert_eq!(read_token(&token).unwrap(), "vmat_abc");
    }

    #[test]
    fn refusals_name_the_file_and_have_a_class() {
        let dir = tempfile::tempdir().unwrap();
        let two = file(dir.path(), "two", b"a\nb\n");
        let empty = file(dir.path(), "empty", b"  \n");
        let big = file(dir.path(), "big", &vec![b'a'; 70_000]);
        let missing = dir.path().join("missing");
        let no_cert = file(dir.path(), "ca.pem", b"not a certificate\n");
        let connect = |token: Option<&Path>, ca: Option<&Path>| {
            Client::connect(&Connect {
                server: Some("https://127.0.0.1:1"),
                token_file: token,
                ca_cert: ca,
            })
            .unwrap_err()
        };
        for (e, path) in [
            (connect(Some(&two), None), &two),
            (connect(Some(&empty), None), &empty),
            (connect(Some(&big), None), &big),
            (connect(Some(&missing), None), &missing),
            (connect(None, Some(&no_cert)), &no_cert),
        ] {
            assert!(
                e.to_string().starts_with(&path.display().to_string()),
                "{e}"
            );
            assert_eq!(e.class(), ErrorClass::Input, "{e}");
        }
        assert!(matches!(
            connect(Some(&big), None),
            ConnectError::TooLarge { .. }
        ));
        let e = Client::connect(&Connect::default()).unwrap_err();
        assert!(matches!(e, ConnectError::NoServer));
        let e = Client::connect(&Connect {
            server: Some("ftp://x"),
            ..Connect::default()
        })
        .unwrap_err();
        assert!(matches!(e, ConnectError::Client(ClientError::BadUrl(_))));
    }
}
