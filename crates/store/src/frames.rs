//! Reading and writing a bundle's frames (the format: `bundle`).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use vmattest_core::chain::{Link, ObjectId, SeqNo, SignedLink, SignedRebase, SignedRevocation};
use vmattest_core::record::Signed;
use vmattest_core::wire::{HEADER_LEN, Kind};

use crate::bundle::header_count;
use crate::{StoreError, StoreMeta, fsio};

pub(crate) const TAG_LINK: u8 = 1;
pub(crate) const TAG_OBJECT: u8 = 2;
pub(crate) const TAG_REBASE: u8 = 3;
pub(crate) const TAG_REVOCATION: u8 = 4;
pub(crate) const TAG_END: u8 = 0xff;

/// What a bundle's header says.
#[derive(Debug, Clone)]
pub struct BundleHeader {
    pub meta: StoreMeta,
    pub first: SeqNo,
    pub last: SeqNo,
}

/// One frame of a bundle.
#[derive(Debug)]
pub enum Frame {
    Link(Box<SignedLink>),
    Rebase(Box<SignedRebase>),
    /// A key revocation the exporting store kept (after the links; version 2 on).
    Revocation(Box<SignedRevocation>),
    /// An object, streamed into the caller's sink: its content address and length.
    Object {
        id: ObjectId,
        len: u64,
    },
}

/// Reads a bundle frame by frame with bounded memory: link frames are small and decoded;
/// object frames are streamed to a sink while hashed; the trailer is checked at the end.
pub struct BundleReader<R: Read> {
    r: HashingReader<R>,
    path: PathBuf,
    done: bool,
}

impl<R: Read> std::fmt::Debug for BundleReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BundleReader")
            .field("path", &self.path)
            .finish()
    }
}

impl<R: Read> BundleReader<R> {
    /// Reads and checks the header; `path` names the bundle in errors.
    pub fn new(inner: R, path: &Path) -> Result<(BundleReader<R>, BundleHeader), StoreError> {
        let mut me = BundleReader {
            r: HashingReader {
                inner,
                hash: blake3::Hasher::new(),
            },
            path: path.to_path_buf(),
            done: false,
        };
        let mut head16 = [0u8; HEADER_LEN];
        me.r.read_exact(&mut head16)
            .map_err(|_| me.bad("truncated header".into()))?;
        let body_len =
            u32::from_be_bytes([head16[12], head16[13], head16[14], head16[15]]) as usize;
        if body_len > Kind::Bundle.max_body() {
            return Err(me.bad(format!(
                "header of {body_len} bytes, expected at most {}",
                Kind::Bundle.max_body()
            )));
        }
        let mut whole = head16.to_vec();
        whole.resize(HEADER_LEN + body_len, 0);
        me.r.read_exact(&mut whole[HEADER_LEN..])
            .map_err(|_| me.bad("truncated header".into()))?;
        let header = (|| -> Result<BundleHeader, String> {
            let mut hr =
                vmattest_core::wire::open(&whole, Kind::Bundle).map_err(|e| e.to_string())?;
            let meta_json = hr
                .bytes("store meta", 64 * 1024)
                .map_err(|e| e.to_string())?;
            let meta: StoreMeta =
                serde_json::from_slice(meta_json).map_err(|e| format!("store meta: {e}"))?;
            let first = SeqNo(hr.u64("first seq").map_err(|e| e.to_string())?);
            let last = SeqNo(hr.u64("last seq").map_err(|e| e.to_string())?);
            header_count(first, last)?;
            Ok(BundleHeader { meta, first, last })
        })()
        .map_err(|d| me.bad(d))?;
        Ok((me, header))
    }

    fn bad(&self, detail: String) -> StoreError {
        StoreError::Bundle {
            path: self.path.clone(),
            detail,
        }
    }

    /// The `len` bytes of a signed object's frame, capped before they are read.
    fn small_frame(&mut self, len: usize, what: &str) -> Result<Vec<u8>, StoreError> {
        let max = Kind::Signed.max_body() + HEADER_LEN;
        if len > max {
            return Err(self.bad(format!(
                "{what} frame of {len} bytes, expected at most {max}"
            )));
        }
        let mut bytes = vec![0u8; len];
        self.r
            .read_exact(&mut bytes)
            .map_err(|_| self.bad("truncated frame".into()))?;
        Ok(bytes)
    }

    /// The next frame, or `None` after a valid trailer. An object frame longer than
    /// `max_object` bytes is refused before any of it is read.
    pub fn next_frame(
        &mut self,
        sink: &mut dyn Write,
        max_object: usize,
    ) -> Result<Option<Frame>, StoreError> {
        if self.done {
            return Ok(None);
        }
        let mut tag = [0u8; 1];
        let digest_so_far = self.r.hash.clone().finalize();
        self.r
            .inner
            .read_exact(&mut tag)
            .map_err(|_| self.bad("truncated: no trailer".into()))?;
        if tag[0] == TAG_END {
            let mut want = [0u8; 32];
            self.r
                .inner
                .read_exact(&mut want)
                .map_err(|_| self.bad("truncated trailer".into()))?;
            if want != *digest_so_far.as_bytes() {
                return Err(self.bad("trailer digest does not match the bundle's bytes".into()));
            }
            let mut extra = [0u8; 1];
            if self
                .r
                .inner
                .read(&mut extra)
                .map_err(fsio::io(&self.path))?
                != 0
            {
                return Err(self.bad("bytes after the trailer".into()));
            }
            self.done = true;
            return Ok(None);
        }
        self.r.hash.update(&tag);
        let mut len = [0u8; 4];
        self.r
            .read_exact(&mut len)
            .map_err(|_| self.bad("truncated frame".into()))?;
        let len = u32::from_be_bytes(len) as usize;
        match tag[0] {
            TAG_LINK => {
                let bytes = self.small_frame(len, "link")?;
                let link =
                    Signed::<Link>::decode(&bytes).map_err(|e| self.bad(format!("link: {e}")))?;
                Ok(Some(Frame::Link(Box::new(link))))
            }
            TAG_REBASE => {
                let bytes = self.small_frame(len, "rebase")?;
                let r =
                    SignedRebase::decode(&bytes).map_err(|e| self.bad(format!("rebase: {e}")))?;
                Ok(Some(Frame::Rebase(Box::new(r))))
            }
            TAG_REVOCATION => {
                let bytes = self.small_frame(len, "revocation")?;
                let r = SignedRevocation::decode(&bytes)
                    .map_err(|e| self.bad(format!("revocation: {e}")))?;
                Ok(Some(Frame::Revocation(Box::new(r))))
            }
            TAG_OBJECT => {
                if max_object == 0 {
                    return Err(self.bad(format!(
                        "object frame of {len} bytes is not named by any link"
                    )));
                }
                if len > max_object {
                    return Err(self.bad(format!(
                        "object frame of {len} bytes, expected at most {max_object}"
                    )));
                }
                let mut id = blake3::Hasher::new();
                let mut left = len;
                let mut buf = vec![0u8; 64 * 1024];
                while left > 0 {
                    let n = left.min(buf.len());
                    self.r
                        .read_exact(&mut buf[..n])
                        .map_err(|_| self.bad("truncated frame".into()))?;
                    id.update(&buf[..n]);
                    sink.write_all(&buf[..n]).map_err(fsio::io(&self.path))?;
                    left -= n;
                }
                Ok(Some(Frame::Object {
                    id: ObjectId(*id.finalize().as_bytes()),
                    len: len as u64,
                }))
            }
            other => Err(self.bad(format!(
                "frame tag {other}, expected 1 (link), 2 (object), 3 (rebase) or 4 (revocation)"
            ))),
        }
    }
}

pub(crate) fn frame<W: Write>(w: &mut W, tag: u8, bytes: &[u8]) -> std::io::Result<()> {
    w.write_all(&[tag])?;
    w.write_all(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes())?;
    w.write_all(bytes)
}

struct HashingReader<R: Read> {
    inner: R,
    hash: blake3::Hasher,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}
