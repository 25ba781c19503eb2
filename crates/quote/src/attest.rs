//! `TPMS_ATTEST`: the structure a TPM signs in `TPM2_Quote` and `TPM2_Certify`.

use core::fmt;

use crate::marshal::{
    MAX_DATA, MAX_DIGEST, MAX_NAME, MAX_PCR_BANKS, MAX_PCR_SELECT, ParseError, Reader,
    TPM_GENERATED_VALUE, TPM_ST_ATTEST_CERTIFY, TPM_ST_ATTEST_QUOTE, bank_name,
};

/// Largest `TPMS_ATTEST` accepted. The real maximum (`sizeof(TPMS_ATTEST)`) is well below this.
pub const MAX_ATTEST_LEN: usize = 4096;

const STRUCTURE: &str = "TPMS_ATTEST";

/// The supported `TPMI_ST_ATTEST` types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttestType {
    /// `TPM_ST_ATTEST_QUOTE` (0x8018).
    Quote,
    /// `TPM_ST_ATTEST_CERTIFY` (0x8017).
    Certify,
}

impl AttestType {
    /// The `TPM_ST` value.
    pub fn tag(self) -> u16 {
        match self {
            AttestType::Quote => TPM_ST_ATTEST_QUOTE,
            AttestType::Certify => TPM_ST_ATTEST_CERTIFY,
        }
    }

    /// The specification's name for the tag.
    pub fn name(self) -> &'static str {
        match self {
            AttestType::Quote => "TPM_ST_ATTEST_QUOTE",
            AttestType::Certify => "TPM_ST_ATTEST_CERTIFY",
        }
    }
}

impl fmt::Display for AttestType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({:#06x})", self.name(), self.tag())
    }
}

/// `TPMS_CLOCK_INFO`. For keys outside the endorsement and platform hierarchies the TPM
/// obfuscates `reset_count` and `restart_count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockInfo {
    pub clock: u64,
    pub reset_count: u32,
    pub restart_count: u32,
    pub safe: bool,
}

/// One `TPMS_PCR_SELECTION`: a PCR bank and a bitmap of PCR indices (bit `i % 8` of byte
/// `i / 8` selects PCR `i`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcrSelection {
    pub hash: u16,
    pub select: Vec<u8>,
}

impl PcrSelection {
    /// Selected PCR indices, ascending.
    pub fn indices(&self) -> Vec<u32> {
        let mut out = Vec::new();
        for (byte_index, byte) in (0u32..).zip(self.select.iter()) {
            for bit in 0..8u32 {
                if byte & (1 << bit) != 0 {
                    out.push(byte_index * 8 + bit);
                }
            }
        }
        out
    }
}

impl fmt::Display for PcrSelection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let indices: Vec<String> = self.indices().iter().map(u32::to_string).collect();
        write!(f, "{}:{}", bank_name(self.hash), indices.join(","))
    }
}

/// Formats a `TPML_PCR_SELECTION` as `sha256:0,16+sha1:7`.
pub fn format_selection(selection: &[PcrSelection]) -> String {
    if selection.is_empty() {
        return "(no PCRs)".to_owned();
    }
    let parts: Vec<String> = selection.iter().map(ToString::to_string).collect();
    parts.join("+")
}

/// The type-specific part of a `TPMS_ATTEST`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attested {
    /// `TPMS_QUOTE_INFO`.
    Quote {
        pcr_select: Vec<PcrSelection>,
        pcr_digest: Vec<u8>,
    },
    /// `TPMS_CERTIFY_INFO`.
    Certify {
        name: Vec<u8>,
        qualified_name: Vec<u8>,
    },
}

/// A parsed `TPMS_ATTEST`. Parsing checks the magic; it does not check the signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attest {
    pub qualified_signer: Vec<u8>,
    /// `extraData`: the caller's qualifying data (nonce).
    pub extra_data: Vec<u8>,
    pub clock_info: ClockInfo,
    pub firmware_version: u64,
    pub attested: Attested,
}

impl Attest {
    /// The attestation type.
    pub fn attest_type(&self) -> AttestType {
        match self.attested {
            Attested::Quote { .. } => AttestType::Quote,
            Attested::Certify { .. } => AttestType::Certify,
        }
    }
}

/// Parses a `TPMS_ATTEST` exactly as marshalled by the TPM (the `TPM2B_ATTEST` contents).
pub fn parse_attest(bytes: &[u8]) -> Result<Attest, ParseError> {
    let mut r = Reader::new(bytes, STRUCTURE, MAX_ATTEST_LEN)?;
    let offset = r.pos();
    let magic = r.u32("magic")?;
    if magic != TPM_GENERATED_VALUE {
        return Err(ParseError::BadMagic {
            structure: STRUCTURE,
            offset,
            found: magic,
        });
    }
    let offset = r.pos();
    let tag = r.u16("type")?;
    let attest_type = match tag {
        TPM_ST_ATTEST_QUOTE => AttestType::Quote,
        TPM_ST_ATTEST_CERTIFY => AttestType::Certify,
        found => {
            return Err(ParseError::UnsupportedType {
                structure: STRUCTURE,
                offset,
                found,
            });
        }
    };
    let qualified_signer = r.tpm2b("qualifiedSigner", MAX_NAME)?.to_vec();
    let extra_data = r.tpm2b("extraData", MAX_DATA)?.to_vec();
    let clock = r.u64("clockInfo.clock")?;
    let reset_count = r.u32("clockInfo.resetCount")?;
    let restart_count = r.u32("clockInfo.restartCount")?;
    let offset = r.pos();
    let safe = match r.u8("clockInfo.safe")? {
        0 => false,
        1 => true,
        other => return Err(r.bad("clockInfo.safe", offset, "0 or 1", other.to_string())),
    };
    let firmware_version = r.u64("firmwareVersion")?;
    let attested = match attest_type {
        AttestType::Quote => {
            let pcr_select = parse_pcr_selection_list(&mut r)?;
            let pcr_digest = r.tpm2b("quote.pcrDigest", MAX_DIGEST)?.to_vec();
            Attested::Quote {
                pcr_select,
                pcr_digest,
            }
        }
        AttestType::Certify => {
            let name = r.tpm2b("certify.name", MAX_NAME)?.to_vec();
            let qualified_name = r.tpm2b("certify.qualifiedName", MAX_NAME)?.to_vec();
            Attested::Certify {
                name,
                qualified_name,
            }
        }
    };
    r.finish()?;
    Ok(Attest {
        qualified_signer,
        extra_data,
        clock_info: ClockInfo {
            clock,
            reset_count,
            restart_count,
            safe,
        },
        firmware_version,
        attested,
    })
}

fn parse_pcr_selection_list(r: &mut Reader<'_>) -> Result<Vec<PcrSelection>, ParseError> {
    let offset = r.pos();
    let count = r.u32("quote.pcrSelect.count")?;
    let count = usize::try_from(count).unwrap_or(usize::MAX);
    if count > MAX_PCR_BANKS {
        return Err(ParseError::TooLong {
            structure: r.structure(),
            field: "quote.pcrSelect.count",
            offset,
            max: MAX_PCR_BANKS,
            found: count,
        });
    }
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let hash = r.u16("quote.pcrSelect.hash")?;
        let offset = r.pos();
        let size = usize::from(r.u8("quote.pcrSelect.sizeofSelect")?);
        if size > MAX_PCR_SELECT {
            return Err(ParseError::TooLong {
                structure: r.structure(),
                field: "quote.pcrSelect.sizeofSelect",
                offset,
                max: MAX_PCR_SELECT,
                found: size,
            });
        }
        let select = r.take(size, "quote.pcrSelect.pcrSelect")?.to_vec();
        out.push(PcrSelection { hash, select });
    }
    Ok(out)
}
