//! Strict big-endian reader for TPM 2.0 marshalled structures, and the constants it needs.
//!
//! Every length is capped at its TPM 2.0 specification maximum, truncation and trailing
//! bytes are refused, and each error names the structure, the field and the byte offset.

use core::fmt;

use vmattest_core::class::{Classify, ErrorClass};
use vmattest_core::wire;

/// `TPM_GENERATED_VALUE`: the magic that starts every TPM-generated `TPMS_ATTEST`.
pub const TPM_GENERATED_VALUE: u32 = 0xff54_4347;

/// `TPM_ST_ATTEST_CERTIFY`.
pub const TPM_ST_ATTEST_CERTIFY: u16 = 0x8017;
/// `TPM_ST_ATTEST_QUOTE`.
pub const TPM_ST_ATTEST_QUOTE: u16 = 0x8018;

/// `TPM_ALG_AES`.
pub const TPM_ALG_AES: u16 = 0x0006;
/// `TPM_ALG_SHA256`.
pub const TPM_ALG_SHA256: u16 = 0x000b;
/// `TPM_ALG_NULL`.
pub const TPM_ALG_NULL: u16 = 0x0010;
/// `TPM_ALG_ECDSA`.
pub const TPM_ALG_ECDSA: u16 = 0x0018;
/// `TPM_ALG_ECC`.
pub const TPM_ALG_ECC: u16 = 0x0023;
/// `TPM_ECC_NIST_P256`.
pub const TPM_ECC_NIST_P256: u16 = 0x0003;
/// `TPM_ECC_NIST_P384`.
pub const TPM_ECC_NIST_P384: u16 = 0x0004;
/// `TPM_ALG_SHA384`.
pub const TPM_ALG_SHA384: u16 = 0x000c;

/// `sizeof(TPMU_NAME)` = `sizeof(TPMT_HA)` with SHA-512: 2 + 64.
pub const MAX_NAME: usize = 66;
/// `sizeof(TPMT_HA)`: the largest `TPM2B_DATA`.
pub const MAX_DATA: usize = 66;
/// `sizeof(TPMU_HA)`: the largest `TPM2B_DIGEST` (SHA-512).
pub const MAX_DIGEST: usize = 64;
/// Largest `TPM2B_ECC_PARAMETER` for NIST P-256.
pub const P256_BYTES: usize = 32;
/// Size of a P-384 coordinate.
pub const P384_BYTES: usize = 48;
/// Largest `sizeofSelect` accepted in a `TPMS_PCR_SELECTION` (64 PCRs; TPMs have 24).
pub const MAX_PCR_SELECT: usize = 8;
/// Largest `TPML_PCR_SELECTION.count` accepted (one entry per PCR bank).
pub const MAX_PCR_BANKS: usize = 16;

/// Name of a `TPM_ALG_ID`, for error messages.
pub fn alg_name(alg: u16) -> &'static str {
    match alg {
        0x0001 => "TPM_ALG_RSA",
        0x0004 => "TPM_ALG_SHA1",
        0x0005 => "TPM_ALG_HMAC",
        0x0006 => "TPM_ALG_AES",
        0x0008 => "TPM_ALG_KEYEDHASH",
        0x000b => "TPM_ALG_SHA256",
        0x000c => "TPM_ALG_SHA384",
        0x000d => "TPM_ALG_SHA512",
        0x0010 => "TPM_ALG_NULL",
        0x0012 => "TPM_ALG_SM3_256",
        0x0013 => "TPM_ALG_SM4",
        0x0014 => "TPM_ALG_RSASSA",
        0x0015 => "TPM_ALG_RSAES",
        0x0016 => "TPM_ALG_RSAPSS",
        0x0017 => "TPM_ALG_OAEP",
        0x0018 => "TPM_ALG_ECDSA",
        0x0019 => "TPM_ALG_ECDH",
        0x001a => "TPM_ALG_ECDAA",
        0x001b => "TPM_ALG_SM2",
        0x001c => "TPM_ALG_ECSCHNORR",
        0x001d => "TPM_ALG_ECMQV",
        0x0020 => "TPM_ALG_KDF1_SP800_56A",
        0x0021 => "TPM_ALG_KDF2",
        0x0022 => "TPM_ALG_KDF1_SP800_108",
        0x0023 => "TPM_ALG_ECC",
        0x0025 => "TPM_ALG_SYMCIPHER",
        0x0026 => "TPM_ALG_CAMELLIA",
        0x0027 => "TPM_ALG_SHA3_256",
        0x0028 => "TPM_ALG_SHA3_384",
        0x0029 => "TPM_ALG_SHA3_512",
        0x0040 => "TPM_ALG_CTR",
        0x0041 => "TPM_ALG_OFB",
        0x0042 => "TPM_ALG_CBC",
        0x0043 => "TPM_ALG_CFB",
        0x0044 => "TPM_ALG_ECB",
        _ => "unknown algorithm",
    }
}

/// Short bank name used in PCR selection strings ("sha256:0,16").
pub fn bank_name(alg: u16) -> String {
    match alg {
        0x0004 => "sha1".to_owned(),
        0x000b => "sha256".to_owned(),
        0x000c => "sha384".to_owned(),
        0x000d => "sha512".to_owned(),
        0x0012 => "sm3_256".to_owned(),
        other => format!("alg{other:#06x}"),
    }
}

/// Name of a `TPM_ST` structure tag, for error messages.
pub fn st_name(tag: u16) -> &'static str {
    match tag {
        0x8014 => "TPM_ST_ATTEST_NV",
        0x8015 => "TPM_ST_ATTEST_COMMAND_AUDIT",
        0x8016 => "TPM_ST_ATTEST_SESSION_AUDIT",
        0x8017 => "TPM_ST_ATTEST_CERTIFY",
        0x8018 => "TPM_ST_ATTEST_QUOTE",
        0x8019 => "TPM_ST_ATTEST_TIME",
        0x801a => "TPM_ST_ATTEST_CREATION",
        0x801c => "TPM_ST_ATTEST_NV_DIGEST",
        _ => "unknown structure tag",
    }
}

/// Formats an algorithm id with its name: `0x0014 (TPM_ALG_RSASSA)`.
pub(crate) fn alg_display(alg: u16) -> String {
    format!("{alg:#06x} ({})", alg_name(alg))
}

/// Why a TPM structure was refused. Offsets count from the start of the given bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("{structure}: {found} bytes, expected at most {max}")]
    Oversize {
        structure: &'static str,
        max: usize,
        found: usize,
    },
    #[error("{structure}: truncated at {field}, offset {offset}: needs {need} bytes, {left} left")]
    Truncated {
        structure: &'static str,
        field: &'static str,
        offset: usize,
        need: usize,
        left: usize,
    },
    #[error("{structure}: {field} at offset {offset} has length {found}, expected at most {max}")]
    TooLong {
        structure: &'static str,
        field: &'static str,
        offset: usize,
        max: usize,
        found: usize,
    },
    #[error(
        "{structure}: magic {found:#010x} at offset {offset}, expected {TPM_GENERATED_VALUE:#010x}"
    )]
    BadMagic {
        structure: &'static str,
        offset: usize,
        found: u32,
    },
    #[error(
        "{structure}: type {found:#06x} ({name}) at offset {offset} is not supported, expected \
         TPM_ST_ATTEST_QUOTE (0x8018) or TPM_ST_ATTEST_CERTIFY (0x8017)",
        name = st_name(*found)
    )]
    UnsupportedType {
        structure: &'static str,
        offset: usize,
        found: u16,
    },
    #[error("{structure}: {field} {found} at offset {offset}, expected {expected}")]
    BadValue {
        structure: &'static str,
        field: &'static str,
        offset: usize,
        expected: &'static str,
        found: String,
    },
    #[error("{structure}: {count} unexpected bytes after the end, at offset {offset}")]
    Trailing {
        structure: &'static str,
        offset: usize,
        count: usize,
    },
}

/// Bytes that are not a well-formed TPM structure are malformed input, whatever altered them.
impl Classify for ParseError {
    fn class(&self) -> ErrorClass {
        ErrorClass::Input
    }
}

/// Cursor over a marshalled structure.
pub(crate) struct Reader<'a> {
    inner: wire::Reader<'a>,
    structure: &'static str,
}

impl fmt::Debug for Reader<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reader")
            .field("structure", &self.structure)
            .field("pos", &self.inner.offset())
            .field("left", &self.inner.remaining())
            .finish()
    }
}

impl<'a> Reader<'a> {
    /// Starts reading `buf`, refusing it outright when longer than `max`.
    pub(crate) fn new(
        buf: &'a [u8],
        structure: &'static str,
        max: usize,
    ) -> Result<Self, ParseError> {
        if buf.len() > max {
            return Err(ParseError::Oversize {
                structure,
                max,
                found: buf.len(),
            });
        }
        Ok(Reader {
            inner: wire::Reader::new(buf),
            structure,
        })
    }

    pub(crate) fn structure(&self) -> &'static str {
        self.structure
    }

    pub(crate) fn pos(&self) -> usize {
        self.inner.offset()
    }

    fn map(&self, e: wire::WireError) -> ParseError {
        match e {
            wire::WireError::Truncated {
                field,
                offset,
                need,
                left,
            } => ParseError::Truncated {
                structure: self.structure,
                field,
                offset,
                need,
                left,
            },
            other => ParseError::BadValue {
                structure: self.structure,
                field: "",
                offset: self.inner.offset(),
                expected: "well-formed input",
                found: other.to_string(),
            },
        }
    }

    pub(crate) fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], ParseError> {
        self.inner.take(field, n).map_err(|e| self.map(e))
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, ParseError> {
        self.inner.u8(field).map_err(|e| self.map(e))
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, ParseError> {
        self.inner.u16(field).map_err(|e| self.map(e))
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, ParseError> {
        self.inner.u32(field).map_err(|e| self.map(e))
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, ParseError> {
        self.inner.u64(field).map_err(|e| self.map(e))
    }

    /// A `TPM2B_*`: u16 size, then that many bytes, the size capped at `max`.
    pub(crate) fn tpm2b(
        &mut self,
        field: &'static str,
        max: usize,
    ) -> Result<&'a [u8], ParseError> {
        let offset = self.pos();
        let len = usize::from(self.u16(field)?);
        if len > max {
            return Err(ParseError::TooLong {
                structure: self.structure,
                field,
                offset,
                max,
                found: len,
            });
        }
        self.take(len, field)
    }

    /// A value error at `offset`.
    pub(crate) fn bad(
        &self,
        field: &'static str,
        offset: usize,
        expected: &'static str,
        found: String,
    ) -> ParseError {
        ParseError::BadValue {
            structure: self.structure,
            field,
            offset,
            expected,
            found,
        }
    }

    /// Reads a u16 algorithm id that must equal `want`.
    pub(crate) fn expect_alg(
        &mut self,
        field: &'static str,
        want: u16,
        expected: &'static str,
    ) -> Result<(), ParseError> {
        let offset = self.pos();
        let alg = self.u16(field)?;
        if alg != want {
            return Err(self.bad(field, offset, expected, alg_display(alg)));
        }
        Ok(())
    }

    /// Refuses any bytes left over.
    pub(crate) fn finish(self) -> Result<(), ParseError> {
        let count = self.inner.remaining();
        if count != 0 {
            return Err(ParseError::Trailing {
                structure: self.structure,
                offset: self.pos(),
                count,
            });
        }
        Ok(())
    }
}
