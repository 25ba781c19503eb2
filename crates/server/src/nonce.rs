//! Stateless challenge nonces: `expires || random || tag`, where the tag is an HMAC under the
//! server's nonce key over the VM, the subset, the expiry and the random part. Issuing one
//! writes nothing; using one inserts it into `used_nonces` in the transaction that stores the
//! result, so each is accepted once. Instances sharing a database share the key file.

use std::path::Path;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::error::ServerError;

const DOMAIN: &[u8] = b"vmattest nonce v1\0";
const RANDOM_LEN: usize = 16;
const TAG_LEN: usize = 24;
pub const NONCE_LEN: usize = 8 + RANDOM_LEN + TAG_LEN;

pub struct NonceKey([u8; 32]);

impl std::fmt::Debug for NonceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NonceKey(..)")
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum NonceError {
    /// Not made by this server's key for this VM and subset.
    Unknown,
    Expired {
        expires: i64,
    },
}

fn random<const N: usize>() -> Result<[u8; N], ServerError> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| ServerError::Random(e.to_string()))?;
    Ok(b)
}

impl NonceKey {
    /// Reads the key at `path`, or makes one there (mode 0600) on first start.
    pub fn load_or_create(path: &Path) -> Result<NonceKey, ServerError> {
        let io = |source| ServerError::Io {
            path: path.display().to_string(),
            source,
        };
        match std::fs::read(path) {
            Ok(b) => {
                let key: [u8; 32] = b.as_slice().try_into().map_err(|_| {
                    ServerError::Corrupt(format!(
                        "{}: expected 32 bytes, found {}",
                        path.display(),
                        b.len()
                    ))
                })?;
                Ok(NonceKey(key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = random::<32>()?;
                crate::write_secret(path, &key).map_err(io)?;
                Ok(NonceKey(key))
            }
            Err(e) => Err(io(e)),
        }
    }

    /// `None` only if HMAC refused the key, which it never does for 32 bytes.
    fn tag(&self, vm: &str, subset: &str, head: &[u8]) -> Option<[u8; TAG_LEN]> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0).ok()?;
        for part in [DOMAIN, vm.as_bytes(), &[0], subset.as_bytes(), &[0], head] {
            mac.update(part);
        }
        let full = mac.finalize().into_bytes();
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&full[..TAG_LEN]);
        Some(tag)
    }

    pub fn issue(&self, vm: &str, subset: &str, expires: i64) -> Result<Vec<u8>, ServerError> {
        let mut n = Vec::with_capacity(NONCE_LEN);
        n.extend_from_slice(&expires.to_be_bytes());
        n.extend_from_slice(&random::<RANDOM_LEN>()?);
        let tag = self
            .tag(vm, subset, &n)
            .ok_or_else(|| ServerError::Corrupt("nonce key refused by HMAC".into()))?;
        n.extend_from_slice(&tag);
        Ok(n)
    }

    /// The nonce's expiry, if this key issued it for `vm` and `subset` and it is still live.
    pub fn check(&self, nonce: &[u8], vm: &str, subset: &str, now: i64) -> Result<i64, NonceError> {
        if nonce.len() != NONCE_LEN {
            return Err(NonceError::Unknown);
        }
        let (head, tag) = nonce.split_at(8 + RANDOM_LEN);
        match self.tag(vm, subset, head) {
            Some(want) if bool::from(want.ct_eq(tag)) => {}
            _ => return Err(NonceError::Unknown),
        }
        let mut e = [0u8; 8];
        e.copy_from_slice(&head[..8]);
        let expires = i64::from_be_bytes(e);
        if expires < now {
            return Err(NonceError::Expired { expires });
        }
        Ok(expires)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_nonce_is_bound_to_key_vm_subset_and_time() {
        let k = NonceKey([7; 32]);
        let n = k.issue("vm1", "all", 100).unwrap();
        assert_eq!(k.check(&n, "vm1", "all", 99), Ok(100));
        assert_eq!(k.check(&n, "vm2", "all", 99), Err(NonceError::Unknown));
        assert_eq!(k.check(&n, "vm1", "code", 99), Err(NonceError::Unknown));
        assert_eq!(
            k.check(&n, "vm1", "all", 101),
            Err(NonceError::Expired { expires: 100 })
        );
        assert_eq!(
            NonceKey([8; 32]).check(&n, "vm1", "all", 99),
            Err(NonceError::Unknown)
        );
        let mut later = n.clone();
        later[7] ^= 1; // a forged expiry breaks the tag
        assert_eq!(k.check(&later, "vm1", "all", 99), Err(NonceError::Unknown));
        assert_ne!(k.issue("vm1", "all", 100).unwrap(), n);
    }
}
