//! [`SealedBlob`] and its byte layout.
//!
//! Layout, all integers big-endian:
//!
//! | field | size |
//! |---|---|
//! | magic `VMATSEAL` | 8 |
//! | version (1) | u16 |
//! | public length P | u32 |
//! | public: marshalled `TPMT_PUBLIC` of the sealed object | P |
//! | private length Q | u32 |
//! | private: contents of the `TPM2B_PRIVATE` from `TPM2_Create` | Q |
//! | PCR count N | u32 |
//! | N times: PCR index (u32) then its SHA-256 value at seal time (32 bytes) | 36 N |
//!
//! Nothing may follow. PCR indices are strictly ascending and at most [`crate::MAX_PCR`].

use vmattest_core::class::{Classify, ErrorClass};

use crate::MAX_PCR;

pub const MAGIC: &[u8; 8] = b"VMATSEAL";
pub const VERSION: u16 = 1;
/// Upper bound for the public part (a keyed-hash `TPMT_PUBLIC` is under 100 bytes).
pub const MAX_PUBLIC_LEN: usize = 1024;
/// Upper bound for the private part (`sizeof(_PRIVATE)` is under 1024 bytes).
pub const MAX_PRIVATE_LEN: usize = 2048;
/// Most PCRs a blob can name.
pub const MAX_PCRS: usize = MAX_PCR as usize + 1;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlobError {
    #[error("sealed blob truncated: expected {expected} bytes for {what}, found {found}")]
    Truncated {
        what: &'static str,
        expected: usize,
        found: usize,
    },
    #[error("not a sealed blob: expected magic \"VMATSEAL\", found {found:02x?}")]
    Magic { found: Vec<u8> },
    #[error("sealed blob version {found} is not supported (expected {expected})")]
    Version { expected: u16, found: u16 },
    #[error("sealed blob {what} too large: expected at most {max}, found {found}")]
    TooLarge {
        what: &'static str,
        max: usize,
        found: usize,
    },
    #[error("sealed blob has {found} bytes after its end (expected none)")]
    Trailing { found: usize },
    #[error(
        "sealed blob PCR list invalid: expected strictly ascending indices 0 to {MAX_PCR}, found {found:?}"
    )]
    PcrList { found: Vec<u32> },
    #[error("sealed blob has {values} PCR values for {pcrs} PCRs")]
    PcrValues { pcrs: usize, values: usize },
}

/// A blob that does not parse is malformed input; a blob the TPM refuses to unseal is a
/// [`crate::TpmError`].
impl Classify for BlobError {
    fn class(&self) -> ErrorClass {
        ErrorClass::Input
    }
}

/// A secret sealed by [`crate::Tpm::seal`]: the TPM object (useless outside the TPM that made
/// it) and the PCR values it is bound to.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedBlob {
    /// Marshalled `TPMT_PUBLIC` of the sealed object (carries the policy digest).
    pub public: Vec<u8>,
    /// The `TPM2B_PRIVATE` contents (the encrypted secret).
    pub private: Vec<u8>,
    /// Selected SHA-256 PCRs, ascending.
    pub pcrs: Vec<u32>,
    /// Their values when the blob was sealed, in the order of `pcrs`.
    pub pcr_values: Vec<[u8; 32]>,
}

impl std::fmt::Debug for SealedBlob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedBlob")
            .field("public_len", &self.public.len())
            .field("private_len", &self.private.len())
            .field("pcrs", &self.pcrs)
            .finish()
    }
}

impl SealedBlob {
    /// Checks the limits and invariants that [`SealedBlob::from_bytes`] checks.
    pub fn validate(&self) -> Result<(), BlobError> {
        check_len("public part", self.public.len(), MAX_PUBLIC_LEN)?;
        check_len("private part", self.private.len(), MAX_PRIVATE_LEN)?;
        check_len("PCR count", self.pcrs.len(), MAX_PCRS)?;
        if self.pcrs.len() != self.pcr_values.len() {
            return Err(BlobError::PcrValues {
                pcrs: self.pcrs.len(),
                values: self.pcr_values.len(),
            });
        }
        let ascending = self.pcrs.windows(2).all(|w| w[0] < w[1]);
        if !ascending || self.pcrs.iter().any(|&p| p > MAX_PCR) {
            return Err(BlobError::PcrList {
                found: self.pcrs.clone(),
            });
        }
        Ok(())
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>, BlobError> {
        self.validate()?;
        let mut out = Vec::with_capacity(
            8 + 2 + 12 + self.public.len() + self.private.len() + 36 * self.pcrs.len(),
        );
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_be_bytes());
        for part in [&self.public, &self.private] {
            out.extend_from_slice(&be_len(part.len()).to_be_bytes());
            out.extend_from_slice(part);
        }
        out.extend_from_slice(&be_len(self.pcrs.len()).to_be_bytes());
        for (pcr, value) in self.pcrs.iter().zip(&self.pcr_values) {
            out.extend_from_slice(&pcr.to_be_bytes());
            out.extend_from_slice(value);
        }
        Ok(out)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, BlobError> {
        let mut r = Reader { rest: bytes };
        let magic = r.take("magic", MAGIC.len())?;
        if magic != MAGIC {
            return Err(BlobError::Magic {
                found: magic.to_vec(),
            });
        }
        let version = u16::from_be_bytes(r.array("version")?);
        if version != VERSION {
            return Err(BlobError::Version {
                expected: VERSION,
                found: version,
            });
        }
        let public = r.part("public part", MAX_PUBLIC_LEN)?;
        let private = r.part("private part", MAX_PRIVATE_LEN)?;
        let count = r.u32_len("PCR count")?;
        check_len("PCR count", count, MAX_PCRS)?;
        let mut pcrs = Vec::with_capacity(count);
        let mut pcr_values = Vec::with_capacity(count);
        for _ in 0..count {
            pcrs.push(u32::from_be_bytes(r.array("PCR index")?));
            pcr_values.push(r.array("PCR value")?);
        }
        if !r.rest.is_empty() {
            return Err(BlobError::Trailing {
                found: r.rest.len(),
            });
        }
        let blob = SealedBlob {
            public,
            private,
            pcrs,
            pcr_values,
        };
        blob.validate()?;
        Ok(blob)
    }
}

fn check_len(what: &'static str, found: usize, max: usize) -> Result<(), BlobError> {
    if found > max {
        return Err(BlobError::TooLarge { what, max, found });
    }
    Ok(())
}

/// Lengths are checked against limits far below `u32::MAX` before this is called.
fn be_len(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, what: &'static str, n: usize) -> Result<&'a [u8], BlobError> {
        if self.rest.len() < n {
            return Err(BlobError::Truncated {
                what,
                expected: n,
                found: self.rest.len(),
            });
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], BlobError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(what, N)?);
        Ok(out)
    }

    fn u32_len(&mut self, what: &'static str) -> Result<usize, BlobError> {
        let n = u32::from_be_bytes(self.array(what)?);
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    fn part(&mut self, what: &'static str, max: usize) -> Result<Vec<u8>, BlobError> {
        let len = self.u32_len(what)?;
        check_len(what, len, max)?;
        Ok(self.take(what, len)?.to_vec())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn sample() -> SealedBlob {
        SealedBlob {
            public: vec![1, 2, 3],
            private: vec![4; 10],
            pcrs: vec![0, 16],
            pcr_values: vec![[0xaa; 32], [0xbb; 32]],
        }
    }

    #[test]
    fn round_trip() {
        let blob = sample();
        let bytes = blob.to_bytes().unwrap();
        assert_eq!(&bytes[..8], b"VMATSEAL");
        assert_eq!(&bytes[8..10], &[0, 1]);
        assert_eq!(bytes.len(), 10 + 4 + 3 + 4 + 10 + 4 + 2 * 36);
        assert_eq!(SealedBlob::from_bytes(&bytes).unwrap(), blob);
    }

    #[test]
    fn every_truncation_is_refused() {
        let bytes = sample().to_bytes().unwrap();
        for len in 0..bytes.len() {
            let err = SealedBlob::from_bytes(&bytes[..len]).unwrap_err();
            assert!(matches!(err, BlobError::Truncated { .. }), "{len}: {err}");
        }
    }

    #[test]
    fn bad_inputs_name_expected_and_found() {
        let bytes = sample().to_bytes().unwrap();

        let mut wrong = bytes.clone();
        wrong[0] = b'X';
        assert!(matches!(
            SealedBlob::from_bytes(&wrong),
            Err(BlobError::Magic { .. })
        ));

        let mut wrong = bytes.clone();
        wrong[9] = 2;
        let err = SealedBlob::from_bytes(&wrong).unwrap_err();
        assert_eq!(
            err.to_string(),
            "sealed blob version 2 is not supported (expected 1)"
        );

        let mut wrong = bytes.clone();
        wrong[10..14].copy_from_slice(&u32::MAX.to_be_bytes());
        let err = SealedBlob::from_bytes(&wrong).unwrap_err();
        assert!(
            matches!(err, BlobError::TooLarge { max: 1024, .. }),
            "{err}"
        );

        let mut wrong = bytes.clone();
        wrong.push(0);
        assert_eq!(
            SealedBlob::from_bytes(&wrong).unwrap_err(),
            BlobError::Trailing { found: 1 }
        );

        let truncated = SealedBlob::from_bytes(&bytes[..12]).unwrap_err();
        assert_eq!(
            truncated.to_string(),
            "sealed blob truncated: expected 4 bytes for public part, found 2"
        );

        let mut unordered = sample();
        unordered.pcrs = vec![16, 0];
        assert!(matches!(
            unordered.to_bytes(),
            Err(BlobError::PcrList { .. })
        ));
    }
}
