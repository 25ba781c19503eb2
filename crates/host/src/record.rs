//! Signed measurement records of images and page proofs: `measure`, `sign`, `verify`,
//! `prove` and `verify-proof`.

use std::path::{Path, PathBuf};

use vmattest_core::alg::{HashAlg, PageIndex};
use vmattest_core::class::{Classify, ErrorClass};
use vmattest_core::record::{
    ImageMeasurement, MAX_NONCE_LEN, MeasurementRecord, RecordError, SignedRecord, UnixTime,
};
use vmattest_core::tree::{ImageTree, PageProof, Progress, ProofError, TreeError, TreeParams};
use vmattest_core::wire::{HEADER_LEN, Kind};
use vmattest_image::{ImageError, MappedImage};
use vmattest_sign::PublicKey;
use vmattest_sign::record::{RecordSigError, verify_signed};

use crate::files::{self, FileError};

#[derive(Debug, thiserror::Error)]
pub enum RecordFileError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{arg} {found:?}: expected {expected}")]
    Arg {
        arg: &'static str,
        expected: &'static str,
        found: String,
    },
    #[error("tree parameters")]
    Params(#[source] TreeError),
    /// The image error names the path itself.
    #[error("image")]
    Image {
        path: PathBuf,
        #[source]
        source: ImageError,
    },
    #[error("{path}")]
    Decode {
        path: PathBuf,
        #[source]
        source: RecordError,
    },
    #[error("{path}")]
    ProofDecode {
        path: PathBuf,
        #[source]
        source: ProofError,
    },
    #[error("{path}")]
    Signature {
        path: PathBuf,
        #[source]
        source: RecordSigError,
    },
    #[error("{path}: record is {age} s old, expected at most {max} s")]
    TooOld { path: PathBuf, age: u64, max: u64 },
    #[error("{path}: nonce {found}, expected {expected}")]
    Nonce {
        path: PathBuf,
        found: String,
        expected: String,
    },
    #[error(
        "image {path}: root {found} ({found_len} bytes), recorded {recorded} ({recorded_len} bytes)"
    )]
    ImageChanged {
        path: String,
        found: String,
        found_len: u64,
        recorded: String,
        recorded_len: u64,
    },
    #[error("{path}: --page {page} --count {count}")]
    Prove {
        path: PathBuf,
        page: u64,
        count: u64,
        #[source]
        source: ProofError,
    },
    #[error("{path}: root {root} is not among the images of {record}")]
    NotInRecord {
        path: PathBuf,
        root: String,
        record: PathBuf,
    },
    #[error("{path}: proof is for root {found}, expected {expected}")]
    WrongRoot {
        path: PathBuf,
        found: String,
        expected: String,
    },
    #[error("{path}")]
    Proof {
        path: PathBuf,
        #[source]
        source: ProofError,
    },
    #[error("{path}: not a vmattest file (expected magic \"VMATTEST\" and a known kind)")]
    NotVmattest { path: PathBuf },
    #[error("encoding the record")]
    Encode(#[source] RecordError),
    #[error("signing the record")]
    Sign(#[source] vmattest_sign::signing::SigningError),
}

impl Classify for RecordFileError {
    fn class(&self) -> ErrorClass {
        use RecordFileError as E;
        match self {
            E::File(e) => e.class(),
            E::Image { source, .. } => source.class(),
            E::Signature { source, .. } => source.class(),
            E::Arg { .. } | E::Params(_) | E::Prove { .. } | E::NotVmattest { .. } => {
                ErrorClass::Input
            }
            E::Decode { source, .. } => source.class(),
            E::ProofDecode { source, .. } => source.class(),
            E::Proof { source, .. } => source.class(),
            E::TooOld { .. }
            | E::Nonce { .. }
            | E::ImageChanged { .. }
            | E::NotInRecord { .. }
            | E::WrongRoot { .. } => ErrorClass::Verification,
            E::Encode(_) => ErrorClass::Environment,
            E::Sign(e) => e.class(),
        }
    }
}

/// Hex of at most `max` bytes for argument `arg`.
pub fn parse_hex(arg: &'static str, text: &str, max: usize) -> Result<Vec<u8>, RecordFileError> {
    match hex::decode(text) {
        Ok(b) if b.len() <= max => Ok(b),
        Ok(_) => Err(RecordFileError::Arg {
            arg,
            expected: "fewer bytes of hex",
            found: text.to_owned(),
        }),
        Err(_) => Err(RecordFileError::Arg {
            arg,
            expected: "an even number of hex digits",
            found: text.to_owned(),
        }),
    }
}

/// Tree parameters from `--alg` and `--salt` (hex; `-` or empty for none).
pub fn tree_params(alg: &str, salt: &str) -> Result<TreeParams, RecordFileError> {
    let Some(alg) = HashAlg::from_name(alg) else {
        return Err(RecordFileError::Arg {
            arg: "--alg",
            expected: "blake3, sha256 or sha384",
            found: alg.to_owned(),
        });
    };
    let salt = if salt == "-" { "" } else { salt };
    let salt = parse_hex("--salt", salt, usize::MAX)?;
    TreeParams::new(alg, &salt).map_err(RecordFileError::Params)
}

/// A verifier's nonce of at most 64 bytes (empty allowed).
pub fn nonce(text: &str) -> Result<Vec<u8>, RecordFileError> {
    parse_hex("--nonce", text, MAX_NONCE_LEN)
}

/// Maps and measures one image.
pub fn measure_image(
    path: &Path,
    params: &TreeParams,
    progress: &dyn Progress,
) -> Result<(ImageTree, ImageMeasurement), RecordFileError> {
    let image = |source| RecordFileError::Image {
        path: path.to_path_buf(),
        source,
    };
    let mapped = MappedImage::open(path).map_err(image)?;
    let tree = mapped.measure(params, progress).map_err(image)?;
    let m = ImageMeasurement {
        path: path.display().to_string(),
        params: params.clone(),
        len: tree.len(),
        root: tree.root(),
    };
    Ok((tree, m))
}

/// The dm-verity hash device of a measured image, with a fresh random (version 4) UUID.
pub fn hash_device(tree: &ImageTree) -> Result<Vec<u8>, RecordFileError> {
    let mut uuid = [0u8; 16];
    getrandom::fill(&mut uuid).map_err(|e| RecordFileError::Arg {
        arg: "--hash-device",
        expected: "OS randomness for the UUID",
        found: e.to_string(),
    })?;
    uuid[6] = (uuid[6] & 0x0f) | 0x40;
    uuid[8] = (uuid[8] & 0x3f) | 0x80;
    tree.verity_hash_device(uuid).ok_or(RecordFileError::Arg {
        arg: "--hash-device",
        expected: "an image measured with --alg sha256 or sha384",
        found: tree.params().alg().name().to_owned(),
    })
}

/// Signs a record of `images` by every key in `keys`.
pub fn sign(
    images: Vec<ImageMeasurement>,
    keys: &[vmattest_sign::SecretKey],
    nonce: Vec<u8>,
    time: UnixTime,
) -> Result<SignedRecord, RecordFileError> {
    use vmattest_sign::Signer as _;
    let record = MeasurementRecord {
        time,
        nonce,
        key_ids: keys.iter().map(|s| s.key_id()).collect(),
        images,
    };
    let signers: Vec<&dyn vmattest_sign::Signer> = keys
        .iter()
        .map(|k| k as &dyn vmattest_sign::Signer)
        .collect();
    let signed = vmattest_sign::signing::sign(record, &signers).map_err(RecordFileError::Sign)?;
    Ok(signed)
}

/// Reads and decodes a signed record.
pub fn load(path: &Path) -> Result<SignedRecord, RecordFileError> {
    let max = (Kind::Signed.max_body() + HEADER_LEN) as u64;
    let bytes = files::read_capped(path, max, "signed record")?;
    SignedRecord::decode(&bytes).map_err(|source| RecordFileError::Decode {
        path: path.to_path_buf(),
        source,
    })
}

/// Every signature against the pinned keys (all of them must sign).
pub fn check_signatures(
    path: &Path,
    signed: &SignedRecord,
    keys: &[PublicKey],
) -> Result<(), RecordFileError> {
    verify_signed(signed, keys).map_err(|source| RecordFileError::Signature {
        path: path.to_path_buf(),
        source,
    })
}

/// What `verify` checks beyond the signatures.
#[derive(Debug, Clone, Default)]
pub struct RecordChecks {
    /// Refuse a record older than this many seconds before `now`.
    pub max_age: Option<(UnixTime, u64)>,
    pub nonce: Option<Vec<u8>>,
}

/// Signatures, age and nonce of a loaded record.
pub fn verify(
    path: &Path,
    signed: &SignedRecord,
    keys: &[PublicKey],
    checks: &RecordChecks,
) -> Result<(), RecordFileError> {
    check_signatures(path, signed, keys)?;
    let record = signed.value();
    if let Some((now, max)) = checks.max_age {
        let age = now.secs.saturating_sub(record.time.secs);
        if age > max {
            return Err(RecordFileError::TooOld {
                path: path.to_path_buf(),
                age,
                max,
            });
        }
    }
    if let Some(want) = &checks.nonce
        && *want != record.nonce
    {
        return Err(RecordFileError::Nonce {
            path: path.to_path_buf(),
            found: hex::encode(&record.nonce),
            expected: hex::encode(want),
        });
    }
    Ok(())
}

/// Re-measures a recorded image at its recorded path and compares.
pub fn check_image(m: &ImageMeasurement, progress: &dyn Progress) -> Result<(), RecordFileError> {
    let (_, now) = measure_image(Path::new(&m.path), &m.params, progress)?;
    if now.len != m.len || now.root != m.root {
        return Err(RecordFileError::ImageChanged {
            path: m.path.clone(),
            found: now.root.to_hex(),
            found_len: now.len,
            recorded: m.root.to_hex(),
            recorded_len: m.len,
        });
    }
    Ok(())
}

/// A proof of pages `page..page+count` of a measured image.
pub fn prove(
    path: &Path,
    mapped: &MappedImage,
    tree: &ImageTree,
    page: u64,
    count: u64,
) -> Result<PageProof, RecordFileError> {
    tree.prove(mapped.bytes(), PageIndex(page), count)
        .map_err(|source| RecordFileError::Prove {
            path: path.to_path_buf(),
            page,
            count,
            source,
        })
}

/// Maps an image for [`prove`].
pub fn map(path: &Path) -> Result<MappedImage, RecordFileError> {
    MappedImage::open(path).map_err(|source| RecordFileError::Image {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads and decodes a page proof.
pub fn load_proof(path: &Path) -> Result<PageProof, RecordFileError> {
    let max = (Kind::PageProof.max_body() + HEADER_LEN) as u64;
    let bytes = files::read_capped(path, max, "page proof")?;
    PageProof::decode(&bytes).map_err(|source| RecordFileError::ProofDecode {
        path: path.to_path_buf(),
        source,
    })
}

/// What a proof must lead to.
#[derive(Debug, Clone, Copy)]
pub enum Expected<'a> {
    Root(&'a [u8]),
    /// A root among the images of a signed record, whose signatures verify under the keys.
    Record(&'a Path, &'a [PublicKey]),
}

/// Checks a proof against its expected root, then its pages against the root.
pub fn check_proof(
    path: &Path,
    proof: &PageProof,
    expected: Expected<'_>,
) -> Result<(), RecordFileError> {
    match expected {
        Expected::Root(want) => {
            if want != proof.root.as_bytes() {
                return Err(RecordFileError::WrongRoot {
                    path: path.to_path_buf(),
                    found: proof.root.to_hex(),
                    expected: hex::encode(want),
                });
            }
        }
        Expected::Record(rec, keys) => {
            let signed = load(rec)?;
            check_signatures(rec, &signed, keys)?;
            let found = signed.value().images.iter().any(|m| {
                m.root.as_bytes() == proof.root.as_bytes()
                    && m.params == proof.params
                    && m.len == proof.image_len
            });
            if !found {
                return Err(RecordFileError::NotInRecord {
                    path: path.to_path_buf(),
                    root: proof.root.to_hex(),
                    record: rec.to_path_buf(),
                });
            }
        }
    }
    proof.verify().map_err(|source| RecordFileError::Proof {
        path: path.to_path_buf(),
        source,
    })
}

/// What `show` tells of a vmattest file.
#[derive(Debug, Default, serde::Serialize)]
pub struct Description {
    pub kind: &'static str,
    pub time: Option<String>,
    pub key_ids: Vec<String>,
    pub signatures: Vec<String>,
    pub images: Vec<crate::report::ImageJson>,
    pub root: Option<String>,
    pub first_page: Option<u64>,
    pub pages: Option<u64>,
}

impl Description {
    /// The text `show` prints for the file at `path`.
    pub fn text(&self, path: &Path) -> String {
        let mut out = format!("{}: {}", path.display(), self.kind);
        if let Some(t) = &self.time {
            out += &format!("\n  time  {t}");
        }
        for s in &self.signatures {
            out += &format!("\n  signature {s}");
        }
        for m in &self.images {
            out += &format!(
                "\n  image {}  {}  {} pages  {}",
                m.root, m.alg, m.pages, m.path
            );
        }
        if let (Some(r), Some(f), Some(n)) = (&self.root, self.first_page, self.pages) {
            out += &format!("\n  proof of pages {f} to {} under root {r}", f + n - 1);
        }
        out
    }
}

/// Describes a record, signed record, link or page proof; other kinds by name only.
pub fn describe(path: &Path) -> Result<Description, RecordFileError> {
    use vmattest_core::chain::Link;
    use vmattest_core::record::Signed;
    use vmattest_core::wire::MAGIC;
    let max = (Kind::PageProof.max_body() + HEADER_LEN) as u64;
    let bytes = files::read_capped(path, max, "vmattest file")?;
    let kind = bytes.get(..10).filter(|h| h[..8] == MAGIC).and_then(|h| {
        Kind::ALL
            .into_iter()
            .find(|k| k.id() == u16::from_be_bytes([h[8], h[9]]))
    });
    let Some(kind) = kind else {
        return Err(RecordFileError::NotVmattest {
            path: path.to_path_buf(),
        });
    };
    let decode = |source| RecordFileError::Decode {
        path: path.to_path_buf(),
        source,
    };
    let mut out = Description {
        kind: kind.name(),
        ..Description::default()
    };
    let fill = |out: &mut Description, r: &MeasurementRecord| {
        out.time = Some(r.time.to_string());
        out.key_ids = r.key_ids.iter().map(|k| k.to_hex()).collect();
        out.images = r
            .images
            .iter()
            .map(crate::report::ImageJson::from)
            .collect();
    };
    let sigs = |e: &[vmattest_core::record::SignatureEntry]| -> Vec<String> {
        e.iter()
            .map(|e| format!("{} by {}", e.alg, e.key_id))
            .collect()
    };
    match kind {
        Kind::MeasurementRecord => fill(
            &mut out,
            &MeasurementRecord::decode(&bytes).map_err(decode)?,
        ),
        Kind::Signed => match SignedRecord::decode(&bytes) {
            Ok(s) => {
                fill(&mut out, s.value());
                out.signatures = sigs(&s.signatures);
            }
            Err(_) => {
                let l = Signed::<Link>::decode(&bytes).map_err(decode)?;
                out.time = Some(l.value().time.to_string());
                out.key_ids = l.value().key_ids.iter().map(|k| k.to_hex()).collect();
                out.root = Some(l.value().state_root.to_hex());
                out.signatures = sigs(&l.signatures);
            }
        },
        Kind::PageProof => {
            let p = PageProof::decode(&bytes).map_err(|source| RecordFileError::ProofDecode {
                path: path.to_path_buf(),
                source,
            })?;
            out.root = Some(p.root.to_hex());
            out.first_page = Some(p.first.0);
            out.pages = Some(p.count);
        }
        _ => {}
    }
    Ok(out)
}
