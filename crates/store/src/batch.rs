//! Page batch objects: the XOR deltas of up to [`BATCH_PAGES`] pages, zstd-compressed, and
//! sealed when the store is encrypted.
//!
//! ```text
//! envelope kind 6 (page batch), version 1, body:
//!   sealed   u8        0 plain, 1 ChaCha20-Poly1305
//!   nonce    [12]      only when sealed
//!   raw_len  u64       length after decompression (<= BATCH_PAGES * 4096)
//!   payload  rest      zstd frame (or its ciphertext and 16-byte tag)
//! ```

use vmattest_core::wire::{Kind, Writer};

use crate::StoreError;
use crate::crypt::{NONCE_LEN, PageKey};

/// Pages per batch: 1 MiB of raw page data.
pub const BATCH_PAGES: usize = vmattest_core::chain::MAX_BATCH_PAGES as usize;
const ZSTD_LEVEL: i32 = 3;
const AAD: &[u8] = b"vmattest page batch v1\0";

pub(crate) fn encode(raw: &[u8], key: Option<&PageKey>) -> Result<Vec<u8>, StoreError> {
    let compressed = zstd::bulk::compress(raw, ZSTD_LEVEL)
        .map_err(|e| StoreError::Input(format!("zstd compression failed: {e}")))?;
    let mut w = Writer::new();
    match key {
        None => {
            w.u8(0).u64(raw.len() as u64).raw(&compressed);
        }
        Some(k) => {
            let (nonce, ct) = k.seal(&compressed, AAD)?;
            w.u8(1).raw(&nonce).u64(raw.len() as u64).raw(&ct);
        }
    }
    Ok(w.envelope(Kind::Batch))
}

/// Decodes a plain batch to its `expect_len` bytes of pages, as a replay does once the batch
/// hashed to the id a signed manifest names (for tests and fuzzing of the decoder).
pub fn decode_plain(bytes: &[u8], expect_len: usize) -> Result<Vec<u8>, String> {
    if expect_len > BATCH_PAGES * vmattest_core::alg::PAGE_SIZE {
        return Err(format!(
            "{expect_len} bytes of pages, expected at most {BATCH_PAGES} pages"
        ));
    }
    let mut dctx = zstd::bulk::Decompressor::new().map_err(|e| format!("zstd: {e}"))?;
    let mut out = Vec::new();
    decode_into(bytes, expect_len, None, &mut dctx, &mut out)?;
    Ok(out)
}

/// Whether a batch's payload is sealed (its signed form says so: the object id covers it).
pub(crate) fn is_sealed(bytes: &[u8]) -> Result<bool, String> {
    let mut r = vmattest_core::wire::open(bytes, Kind::Batch).map_err(|e| e.to_string())?;
    match r.u8("sealed flag").map_err(|e| e.to_string())? {
        0 => Ok(false),
        1 => Ok(true),
        other => Err(format!("sealed flag {other}, expected 0 or 1")),
    }
}

/// Decodes a batch whose raw length must be `expect_len` into `out`, reusing the caller's
/// decompression context and buffer (restores decode thousands of batches).
pub(crate) fn decode_into(
    bytes: &[u8],
    expect_len: usize,
    key: Option<&PageKey>,
    dctx: &mut zstd::bulk::Decompressor<'static>,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    let mut r = vmattest_core::wire::open(bytes, Kind::Batch).map_err(|e| e.to_string())?;
    let sealed = r.u8("sealed flag").map_err(|e| e.to_string())?;
    let nonce = match sealed {
        0 => None,
        1 => Some(r.take("nonce", NONCE_LEN).map_err(|e| e.to_string())?),
        other => return Err(format!("sealed flag {other}, expected 0 or 1")),
    };
    let raw_len = r.u64("raw length").map_err(|e| e.to_string())?;
    if raw_len != expect_len as u64 {
        return Err(format!(
            "holds {raw_len} bytes of pages, the manifest expects {expect_len}"
        ));
    }
    let rest = bytes.len() - r.offset();
    let payload = r.take("payload", rest).map_err(|e| e.to_string())?;
    let opened;
    let compressed = match (nonce, key) {
        (None, None) => payload,
        // An encrypted store never holds a plain batch: store.json was edited.
        (None, Some(_)) => return Err("batch is plain, the store is encrypted".into()),
        (Some(n), Some(k)) => {
            opened = k
                .open(n, payload, AAD)
                .ok_or("decryption failed (wrong secret or altered bytes)")?;
            opened.as_slice()
        }
        (Some(_), None) => return Err("batch is encrypted; a secret is needed".into()),
    };
    out.clear();
    out.reserve(expect_len);
    let n = dctx
        .decompress_to_buffer(compressed, out)
        .map_err(|e| format!("zstd: {e}"))?;
    if n != expect_len {
        return Err(format!("decompresses to {n} bytes, expected {expect_len}"));
    }
    Ok(())
}

/// The page batch codec of one chain, as takes and restores use it: zstd, sealed under the
/// chain's page key when the store is encrypted. For benchmarks and tools; a store never
/// decodes a batch before it hashed to the id a signed manifest names.
pub struct BatchCodec {
    key: Option<PageKey>,
    dctx: zstd::bulk::Decompressor<'static>,
    out: Vec<u8>,
}

impl std::fmt::Debug for BatchCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("BatchCodec")
            .field("sealed", &self.key.is_some())
            .finish_non_exhaustive()
    }
}

impl BatchCodec {
    /// The codec of a plain store, or of an encrypted one: `secret` with the chain's baseline
    /// state root and VM id (what the page key is derived from).
    pub fn new(sealed: Option<(&crate::StoreSecret, &[u8], &str)>) -> Result<Self, StoreError> {
        let dctx = zstd::bulk::Decompressor::new()
            .map_err(|e| StoreError::Input(format!("zstd decompressor: {e}")))?;
        Ok(BatchCodec {
            key: sealed.map(|(s, root, vm)| s.page_key(root, vm)),
            dctx,
            out: Vec::new(),
        })
    }

    /// Encodes up to [`BATCH_PAGES`] pages of raw (XOR delta) bytes.
    pub fn encode(&self, raw: &[u8]) -> Result<Vec<u8>, StoreError> {
        encode(raw, self.key.as_ref())
    }

    /// Decodes a batch that must hold `expect_len` raw bytes.
    pub fn decode(&mut self, bytes: &[u8], expect_len: usize) -> Result<&[u8], String> {
        decode_into(
            bytes,
            expect_len,
            self.key.as_ref(),
            &mut self.dctx,
            &mut self.out,
        )?;
        Ok(&self.out)
    }
}
