//! Encryption at rest: page batches sealed with ChaCha20-Poly1305 under a per-VM key.
//!
//! key = HKDF-SHA256(ikm = store secret, salt = baseline state root,
//!                   info = "vmattest page key v1\0" || vm id)
//!
//! The baseline state root is fixed for the life of a chain, so every batch of a chain uses
//! one key and a fresh random 96-bit nonce; the object id (a hash of the ciphertext) and the
//! AEAD tag both protect integrity.

use std::path::Path;

use chacha20poly1305::aead::{Aead as _, KeyInit as _, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hkdf::Hkdf;
use sha2_hkdf::Sha256;
use zeroize::Zeroizing;

use crate::StoreError;
use crate::fsio;

pub const PAGE_KEY_INFO: &[u8] = b"vmattest page key v1\0";
pub const NONCE_LEN: usize = 12;

/// The 32-byte secret from which a chain's keys are derived. Never printed.
pub struct StoreSecret(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for StoreSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreSecret(..)")
    }
}

impl StoreSecret {
    /// Writes a new random secret as hex to `path`, created with mode 0600.
    pub fn generate(path: &Path) -> Result<StoreSecret, StoreError> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut raw = Zeroizing::new([0u8; 32]);
        getrandom::fill(raw.as_mut())
            .map_err(|e| StoreError::Crypto(format!("OS randomness: {e}")))?;
        let text = Zeroizing::new(format!("{}\n", hex::encode(raw.as_ref())));
        let mut f = std::fs::File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(fsio::io(path))?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(fsio::io(path))?;
        Ok(StoreSecret(raw))
    }

    /// Reads a secret file: 64 hex digits, mode 0600 (no group or other access).
    pub fn load(path: &Path) -> Result<StoreSecret, StoreError> {
        use std::os::unix::fs::PermissionsExt as _;
        let meta = std::fs::metadata(path).map_err(fsio::io(path))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(StoreError::Secret(format!(
                "secret file {}: mode {mode:04o} lets group or others read it; expected 0600",
                path.display()
            )));
        }
        let text = Zeroizing::new(fsio::read_capped(path, 1024)?);
        StoreSecret::parse(&text, &format!("secret file {}", path.display()))
    }

    /// A secret from the text of a secret file (64 hex digits), e.g. as unsealed by a TPM.
    pub fn parse(text: &[u8], origin: &str) -> Result<StoreSecret, StoreError> {
        let trimmed = std::str::from_utf8(text).map(str::trim).unwrap_or("");
        let mut raw = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(trimmed, raw.as_mut())
            .map_err(|_| StoreError::Secret(format!("{origin}: expected 64 hex digits")))?;
        Ok(StoreSecret(raw))
    }

    /// The secret as a secret file holds it (64 hex digits), to hand it to another holder.
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(self.0.as_ref()))
    }

    /// The chain's page key.
    pub(crate) fn page_key(&self, baseline_root: &[u8], vm_id: &str) -> PageKey {
        let hk = Hkdf::<Sha256>::new(Some(baseline_root), self.0.as_ref());
        let mut key = Zeroizing::new([0u8; 32]);
        let info = [PAGE_KEY_INFO, vm_id.as_bytes()].concat();
        // 32 bytes is far below HKDF-SHA256's output limit, so expand cannot fail.
        let _ = hk.expand(&info, key.as_mut());
        PageKey(key)
    }
}

pub(crate) struct PageKey(Zeroizing<[u8; 32]>);

/// Encrypts the head cache page by page: XChaCha20 with nonce (page index, seq that last
/// wrote the page), so a page is never encrypted twice under one nonce.
pub(crate) struct CacheKey(Zeroizing<[u8; 32]>);

pub const CACHE_KEY_INFO: &[u8] = b"vmattest head cache key v1\0";

impl StoreSecret {
    pub(crate) fn cache_key(&self, baseline_root: &[u8], vm_id: &str) -> CacheKey {
        let hk = Hkdf::<Sha256>::new(Some(baseline_root), self.0.as_ref());
        let mut key = Zeroizing::new([0u8; 32]);
        let info = [CACHE_KEY_INFO, vm_id.as_bytes()].concat();
        let _ = hk.expand(&info, key.as_mut());
        CacheKey(key)
    }
}

impl CacheKey {
    /// En- or decrypts one page in place (the keystream XOR is its own inverse).
    pub fn apply(&self, page: u64, version: u64, buf: &mut [u8]) {
        use chacha20::XChaCha20;
        use chacha20::cipher::{KeyIvInit as _, StreamCipher as _};
        let mut nonce = [0u8; 24];
        nonce[..8].copy_from_slice(&page.to_be_bytes());
        nonce[8..16].copy_from_slice(&version.to_be_bytes());
        let mut c = XChaCha20::new(self.0.as_ref().into(), &nonce.into());
        c.apply_keystream(buf);
    }
}

impl PageKey {
    pub fn seal(&self, plain: &[u8], aad: &[u8]) -> Result<([u8; NONCE_LEN], Vec<u8>), StoreError> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce)
            .map_err(|e| StoreError::Crypto(format!("OS randomness: {e}")))?;
        let cipher = ChaCha20Poly1305::new(Key::from_slice(self.0.as_ref()));
        let ct = cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: plain, aad })
            .map_err(|_| StoreError::Crypto("encryption failed".into()))?;
        Ok((nonce, ct))
    }

    pub fn open(&self, nonce: &[u8], ct: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
        let cipher = ChaCha20Poly1305::new(Key::from_slice(self.0.as_ref()));
        cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad })
            .ok()
    }
}
