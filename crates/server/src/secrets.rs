//! Webhook secrets at rest: sealed with ChaCha20-Poly1305 under the server's secrets key
//! (`STATE_DIR/secrets.key`, 32 bytes from the OS, 0600), with the VM's name in the associated
//! data, so that a database copied off the host does not give the secrets away and a sealed
//! secret moved onto another VM's row does not open.
//!
//! Encoding, version 1: `0x01 || nonce (12 random bytes) || ciphertext || tag (16 bytes)`.

use std::path::Path;

use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, KeyInit, Nonce};
use zeroize::Zeroizing;

const VERSION: u8 = 1;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const DOMAIN: &[u8] = b"vmattest webhook secret v1\0";

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("{path}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: expected 32 bytes, found {found}")]
    KeyLength { path: String, found: usize },
    #[error(
        "{path}: mode {mode:04o}, expected 0600 (group and others must not read the secrets key)"
    )]
    KeyMode { path: String, mode: u32 },
    #[error("randomness: {0}")]
    Random(String),
    #[error(
        "sealed webhook secret of VM {vm}: expected version {VERSION} and at least {} bytes, found version {version} and {len} bytes",
        1 + NONCE_LEN + TAG_LEN
    )]
    Format { vm: String, version: u8, len: usize },
    #[error(
        "sealed webhook secret of VM {vm}: does not open under this server's secrets key (another key file, or another VM's row)"
    )]
    Open { vm: String },
}

/// The key that seals webhook secrets in the database.
pub struct SecretsKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretsKey(..)")
    }
}

impl SecretsKey {
    /// Reads the key at `path` (refused when group- or world-accessible), or makes one there
    /// (mode 0600) on first start. Instances sharing one database must share this file.
    pub fn load_or_create(path: &Path) -> Result<SecretsKey, SealError> {
        use std::os::unix::fs::PermissionsExt as _;
        let io = |source| SealError::Io {
            path: path.display().to_string(),
            source,
        };
        match std::fs::read(path) {
            Ok(b) => {
                let b = Zeroizing::new(b);
                let mode = std::fs::metadata(path).map_err(io)?.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(SealError::KeyMode {
                        path: path.display().to_string(),
                        mode,
                    });
                }
                let key: [u8; 32] = b.as_slice().try_into().map_err(|_| SealError::KeyLength {
                    path: path.display().to_string(),
                    found: b.len(),
                })?;
                Ok(SecretsKey(Zeroizing::new(key)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = Zeroizing::new([0u8; 32]);
                getrandom::fill(key.as_mut_slice())
                    .map_err(|e| SealError::Random(e.to_string()))?;
                crate::write_secret(path, key.as_slice()).map_err(io)?;
                Ok(SecretsKey(key))
            }
            Err(e) => Err(io(e)),
        }
    }

    fn cipher(&self) -> ChaCha20Poly1305 {
        ChaCha20Poly1305::new(Key::from_slice(self.0.as_slice()))
    }

    fn aad(vm: &str) -> Vec<u8> {
        [DOMAIN, vm.as_bytes()].concat()
    }

    /// Seals `secret` for the row of `vm`, under a fresh random nonce.
    pub fn seal(&self, vm: &str, secret: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|e| SealError::Random(e.to_string()))?;
        let aad = SecretsKey::aad(vm);
        let ct = self
            .cipher()
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: secret,
                    aad: &aad,
                },
            )
            .map_err(|_| SealError::Open { vm: vm.to_owned() })?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + ct.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Opens a secret sealed for the row of `vm`.
    pub fn open(&self, vm: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let version = sealed.first().copied().unwrap_or(0);
        if version != VERSION || sealed.len() < 1 + NONCE_LEN + TAG_LEN {
            return Err(SealError::Format {
                vm: vm.to_owned(),
                version,
                len: sealed.len(),
            });
        }
        let (nonce, ct) = sealed[1..].split_at(NONCE_LEN);
        let aad = SecretsKey::aad(vm);
        self.cipher()
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad: &aad })
            .map(Zeroizing::new)
            .map_err(|_| SealError::Open { vm: vm.to_owned() })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_sealed_secret_opens_only_for_its_vm_and_key() {
        let k = SecretsKey(Zeroizing::new([3; 32]));
        let s = k.seal("vm1", b"0123456789abcdef").unwrap();
        assert_eq!(s[0], VERSION);
        assert!(!s.windows(16).any(|w| w == b"0123456789abcdef"));
        assert_eq!(k.open("vm1", &s).unwrap().as_slice(), b"0123456789abcdef");
        assert!(matches!(k.open("vm2", &s), Err(SealError::Open { .. })));
        let other = SecretsKey(Zeroizing::new([4; 32]));
        assert!(matches!(other.open("vm1", &s), Err(SealError::Open { .. })));
        let mut flipped = s.clone();
        flipped[20] ^= 1;
        assert!(matches!(
            k.open("vm1", &flipped),
            Err(SealError::Open { .. })
        ));
        assert!(matches!(
            k.open("vm1", &s[..10]),
            Err(SealError::Format { .. })
        ));
        assert_ne!(k.seal("vm1", b"0123456789abcdef").unwrap(), s);
    }
}
