//! Canonical binary encoding shared by every vmattest object.
//!
//! ```text
//! +----------+---------+---------+----------+----------------------+
//! | magic    | kind    | version | body_len | body                 |
//! | VMATTEST | u16 BE  | u16 BE  | u32 BE   | body_len bytes       |
//! +----------+---------+---------+----------+----------------------+
//!   0          8         10        12         16
//! ```
//!
//! Integers are fixed-width big-endian; byte strings carry a length prefix; nothing is
//! optional or reorderable, so each value has exactly one encoding. Decoders cap every length,
//! refuse trailing bytes and name the field and byte offset of the first problem.

use core::fmt;

use crate::class::{Classify, ErrorClass};

pub const MAGIC: [u8; 8] = *b"VMATTEST";
pub const HEADER_LEN: usize = 16;

/// Object kinds with stable ids; the id and version are covered by every signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    MeasurementRecord,
    Signed,
    PageProof,
    Manifest,
    Link,
    Batch,
    Bundle,
    Evidence,
    SnapshotReport,
    ConfigStatement,
    ConfigDisclosure,
    Rebase,
    Revocation,
}

impl Kind {
    pub const ALL: [Kind; 13] = [
        Kind::MeasurementRecord,
        Kind::Signed,
        Kind::PageProof,
        Kind::Manifest,
        Kind::Link,
        Kind::Batch,
        Kind::Bundle,
        Kind::Evidence,
        Kind::SnapshotReport,
        Kind::ConfigStatement,
        Kind::ConfigDisclosure,
        Kind::Rebase,
        Kind::Revocation,
    ];

    pub fn id(self) -> u16 {
        match self {
            Kind::MeasurementRecord => 1,
            Kind::Signed => 2,
            Kind::PageProof => 3,
            Kind::Manifest => 4,
            Kind::Link => 5,
            Kind::Batch => 6,
            Kind::Bundle => 7,
            Kind::Evidence => 8,
            Kind::SnapshotReport => 9,
            Kind::ConfigStatement => 10,
            Kind::ConfigDisclosure => 11,
            Kind::Rebase => 12,
            Kind::Revocation => 13,
        }
    }

    /// Current format version of this kind.
    pub fn version(self) -> u16 {
        match self {
            // 2: BLAKE3 delta digests key their leaves and parents; 3: key announcements.
            Kind::Link => 3,
            // 2: the announcing links of the folded seqs.
            Kind::Rebase => 2,
            // 2: revocation frames.
            Kind::Bundle => 2,
            // 2: the anchor flag and carried entries.
            Kind::Manifest => 2,
            // 2: patch-site reports; 3: static-call targets in them; 4: reports by fingerprint.
            Kind::Evidence => 4,
            _ => 1,
        }
    }

    /// Oldest version still read; objects are always written at [`Kind::version`].
    pub fn oldest_version(self) -> u16 {
        match self {
            Kind::Evidence | Kind::Manifest | Kind::Rebase | Kind::Bundle => 1,
            Kind::Link => 2,
            k => k.version(),
        }
    }

    /// Largest body accepted for this kind.
    pub const fn max_body(self) -> usize {
        match self {
            Kind::MeasurementRecord => 4 << 20,
            Kind::Signed => 5 << 20,
            Kind::PageProof => 20 << 20,
            Kind::Manifest => 1 << 30,
            Kind::Link => 40 * 1024,
            Kind::Batch => 2 << 20,
            Kind::Bundle => 64 * 1024,
            Kind::Evidence => 256 * 1024,
            Kind::SnapshotReport => 64 * 1024,
            Kind::ConfigStatement => 4096,
            Kind::ConfigDisclosure => 256 * 1024,
            Kind::Rebase => 4 << 20,
            Kind::Revocation => 24 * 1024,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::MeasurementRecord => "measurement record",
            Kind::Signed => "signed object",
            Kind::PageProof => "page proof",
            Kind::Manifest => "manifest",
            Kind::Link => "chain link",
            Kind::Batch => "page batch",
            Kind::Bundle => "bundle",
            Kind::Evidence => "runtime evidence",
            Kind::SnapshotReport => "snapshot report",
            Kind::ConfigStatement => "config statement",
            Kind::ConfigDisclosure => "config disclosure",
            Kind::Rebase => "chain rebase",
            Kind::Revocation => "key revocation",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Decoding errors; offsets count from the start of the object.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("not a vmattest object: expected magic \"VMATTEST\", found {found:?}")]
    BadMagic { found: String },
    #[error("expected a {expected}, found object kind {found}")]
    WrongKind { expected: Kind, found: u16 },
    #[error("{kind} format version {found}: expected {expected}")]
    BadVersion {
        kind: Kind,
        expected: u16,
        found: u16,
    },
    #[error("{kind} of {found} bytes: expected at most {max}")]
    Oversize {
        kind: Kind,
        max: usize,
        found: usize,
    },
    #[error("truncated: {field} at byte {offset} needs {need} bytes, {left} left")]
    Truncated {
        field: &'static str,
        offset: usize,
        need: usize,
        left: usize,
    },
    #[error("{field} at byte {offset}: length {found} exceeds the limit {max}")]
    TooLong {
        field: &'static str,
        offset: usize,
        max: usize,
        found: usize,
    },
    #[error("{field} at byte {offset}: {expected}, found {found}")]
    BadValue {
        field: &'static str,
        offset: usize,
        expected: &'static str,
        found: String,
    },
    #[error("{count} unexpected bytes after the {kind} at byte {offset}")]
    Trailing {
        kind: Kind,
        offset: usize,
        count: usize,
    },
}

impl WireError {
    /// The field a decoder refused, for errors about one field.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            WireError::Truncated { field, .. }
            | WireError::TooLong { field, .. }
            | WireError::BadValue { field, .. } => Some(field),
            _ => None,
        }
    }
}

/// Every decoding failure is malformed input: whatever was tampered with, the bytes are not a
/// well-formed object, and no commitment has been checked yet.
impl Classify for WireError {
    fn class(&self) -> ErrorClass {
        ErrorClass::Input
    }
}

/// Builds a canonical body.
#[derive(Debug, Default)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    pub fn new() -> Writer {
        Writer::default()
    }

    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }

    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// Fixed-length bytes whose length the reader knows from context.
    pub fn raw(&mut self, v: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(v);
        self
    }

    /// Bytes with a u32 length prefix. Callers keep `v` below their documented cap.
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.u32(u32::try_from(v.len()).unwrap_or(u32::MAX));
        self.raw(v)
    }

    pub fn finish(self) -> Vec<u8> {
        self.buf
    }

    /// Wraps the body in the object header.
    pub fn envelope(self, kind: Kind) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.buf.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&kind.id().to_be_bytes());
        out.extend_from_slice(&kind.version().to_be_bytes());
        out.extend_from_slice(
            &u32::try_from(self.buf.len())
                .unwrap_or(u32::MAX)
                .to_be_bytes(),
        );
        out.extend_from_slice(&self.buf);
        out
    }
}

/// Checks the header of `bytes` and returns a reader over its body.
pub fn open(bytes: &[u8], kind: Kind) -> Result<Reader<'_>, WireError> {
    open_versioned(bytes, kind).map(|(r, _)| r)
}

/// As [`open`], also returning the object's version (from [`Kind::oldest_version`] on).
pub fn open_versioned(bytes: &[u8], kind: Kind) -> Result<(Reader<'_>, u16), WireError> {
    let max = kind.max_body() + HEADER_LEN;
    if bytes.len() > max {
        return Err(WireError::Oversize {
            kind,
            max,
            found: bytes.len(),
        });
    }
    let mut r = Reader { buf: bytes, pos: 0 };
    let magic = r.take("magic", MAGIC.len())?;
    if magic != MAGIC {
        return Err(WireError::BadMagic {
            found: String::from_utf8_lossy(magic).into_owned(),
        });
    }
    let found = r.u16("kind")?;
    if found != kind.id() {
        return Err(WireError::WrongKind {
            expected: kind,
            found,
        });
    }
    let version = r.u16("version")?;
    if !(kind.oldest_version()..=kind.version()).contains(&version) {
        return Err(WireError::BadVersion {
            kind,
            expected: kind.version(),
            found: version,
        });
    }
    let body_len = r.len32("body length", kind.max_body())?;
    let left = bytes.len() - HEADER_LEN;
    if body_len > left {
        return Err(WireError::Truncated {
            field: "body",
            offset: HEADER_LEN,
            need: body_len,
            left,
        });
    }
    if body_len < left {
        return Err(WireError::Trailing {
            kind,
            offset: HEADER_LEN + body_len,
            count: left - body_len,
        });
    }
    Ok((r, version))
}

/// Reads a canonical body; every read names its field for the error message.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Reads big-endian fields of `buf` from its start, without an envelope (for other
    /// canonical encodings, such as the TPM's).
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }

    pub fn offset(&self) -> usize {
        self.pos
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn take(&mut self, field: &'static str, n: usize) -> Result<&'a [u8], WireError> {
        let left = self.buf.len() - self.pos;
        if n > left {
            return Err(WireError::Truncated {
                field,
                offset: self.pos,
                need: n,
                left,
            });
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], WireError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(field, N)?);
        Ok(out)
    }

    pub fn u8(&mut self, field: &'static str) -> Result<u8, WireError> {
        Ok(self.array::<1>(field)?[0])
    }

    /// The next byte, left unread.
    pub fn peek_u8(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    pub fn u16(&mut self, field: &'static str) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    pub fn u32(&mut self, field: &'static str) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    pub fn u64(&mut self, field: &'static str) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    /// A u32 length, refused above `max`.
    pub fn len32(&mut self, field: &'static str, max: usize) -> Result<usize, WireError> {
        let offset = self.pos;
        let n = self.u32(field)? as usize;
        if n > max {
            return Err(WireError::TooLong {
                field,
                offset,
                max,
                found: n,
            });
        }
        Ok(n)
    }

    /// Length-prefixed bytes, refused above `max`.
    pub fn bytes(&mut self, field: &'static str, max: usize) -> Result<&'a [u8], WireError> {
        let n = self.len32(field, max)?;
        self.take(field, n)
    }

    /// Length-prefixed UTF-8.
    pub fn string(&mut self, field: &'static str, max: usize) -> Result<&'a str, WireError> {
        let offset = self.pos;
        let b = self.bytes(field, max)?;
        core::str::from_utf8(b).map_err(|_| WireError::BadValue {
            field,
            offset,
            expected: "expected UTF-8 text",
            found: "invalid UTF-8".into(),
        })
    }

    /// Fails unless every byte was consumed.
    pub fn finish(self, kind: Kind) -> Result<(), WireError> {
        let count = self.buf.len() - self.pos;
        if count != 0 {
            return Err(WireError::Trailing {
                kind,
                offset: self.pos,
                count,
            });
        }
        Ok(())
    }

    pub fn bad(
        &self,
        field: &'static str,
        offset: usize,
        expected: &'static str,
        found: impl fmt::Display,
    ) -> WireError {
        WireError::BadValue {
            field,
            offset,
            expected,
            found: found.to_string(),
        }
    }
}
