//! Snapshot chains of files: takes from component files, and proofs of pages at any seq.

use std::path::{Path, PathBuf};

use vmattest_core::alg::PageIndex;
use vmattest_core::chain::{ComponentKind, SeqNo};
use vmattest_core::class::{Classify, ErrorClass};
use vmattest_core::record::UnixTime;
use vmattest_core::tree::{ImageTree, PageProof, Progress, TreeError, TreeParams};
use vmattest_sign::Signer;
use vmattest_store::{
    ComponentInput, PruneOptions, PruneSummary, Store, StoreError, StoreMeta, StoreSecret,
    TakeOptions, TakeSummary, Verified,
};

use crate::files::{self, FileError};
use crate::tpm::{self, TpmError};
use crate::verifier::Verifier;

/// Largest dirty page list read.
const MAX_DIRTY_LIST: u64 = 256 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Secret(#[from] TpmError),
    #[error("{arg} {found:?}: expected {expected}")]
    Arg {
        arg: &'static str,
        expected: String,
        found: String,
    },
    #[error("{file}:{line}: expected a page index, found {found:?}")]
    DirtyLine {
        file: PathBuf,
        line: usize,
        found: String,
    },
    #[error("component {component}")]
    Tree {
        component: String,
        #[source]
        source: TreeError,
    },
    #[error("component {component}")]
    Prove {
        component: String,
        #[source]
        source: vmattest_core::tree::ProofError,
    },
    #[error("creating a private temporary directory")]
    TempDir {
        #[source]
        source: std::io::Error,
    },
    #[error("component {component}")]
    Image {
        component: String,
        #[source]
        source: vmattest_image::ImageError,
    },
}

impl Classify for ChainError {
    fn class(&self) -> ErrorClass {
        match self {
            ChainError::Store(e) => e.class(),
            ChainError::File(e) => e.class(),
            ChainError::Secret(e) => e.class(),
            ChainError::Arg { .. }
            | ChainError::DirtyLine { .. }
            | ChainError::Tree { .. }
            | ChainError::Prove { .. } => ErrorClass::Input,
            ChainError::Image { .. } | ChainError::TempDir { .. } => ErrorClass::Environment,
        }
    }
}

/// Creates a store for `vm_id`. With `secret`, its pages are encrypted under that store secret
/// (plain or TPM-sealed), which is generated when the file does not exist yet. Without
/// `head_cache`, the store keeps only the head's page digests, not a copy of its images.
pub fn init(
    root: &Path,
    vm_id: String,
    params: &TreeParams,
    policy_id: String,
    secret: Option<&Path>,
    layout: Layout,
) -> Result<StoreMeta, ChainError> {
    if let Some(path) = secret {
        if path.exists() {
            tpm::load_secret(path)?;
        } else {
            StoreSecret::generate(path)?;
        }
    }
    let meta = StoreMeta {
        format: vmattest_store::STORE_FORMAT,
        vm_id,
        alg: params.alg().name().into(),
        salt: hex::encode(params.salt()),
        policy_id,
        encrypted: secret.is_some(),
        head_cache: layout.head_cache,
        anchor_every: layout.anchor_every,
    };
    Store::init(root, meta.clone())?;
    Ok(meta)
}

/// How a new store keeps its head and anchors its chain.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    /// Keep a copy of the head's images (XOR deltas, fast head restores).
    pub head_cache: bool,
    /// Every how many seqs a link is an anchor; 0: only on demand.
    pub anchor_every: u32,
}

impl Default for Layout {
    fn default() -> Layout {
        Layout {
            head_cache: true,
            anchor_every: vmattest_store::DEFAULT_ANCHOR_EVERY,
        }
    }
}

/// Takes the next link from component files (`PATH` or `NAME=PATH` by kind, see
/// [`components`]) with optional dirty page lists (see [`apply_dirty`]).
pub fn take_files(
    root: &Path,
    by_kind: &[(ComponentKind, &[String])],
    dirty: &[String],
    opts: &TakeOptions<'_>,
    progress: Box<dyn Progress + Send>,
) -> Result<TakeSummary, ChainError> {
    let mut inputs = components(by_kind)?;
    apply_dirty(&mut inputs, dirty)?;
    let mut store = Store::open_writer(root)?;
    let total = inputs
        .iter()
        .filter_map(|c| std::fs::metadata(&c.path).ok())
        .map(|m| m.len())
        .sum();
    progress.set_total(total);
    store.set_progress(progress);
    Ok(store.take(&inputs, opts)?)
}

/// What a prune keeps: the newest `keep` seqs, and every seq younger than `within` seconds
/// (with the state in effect that long ago); a seq goes only when both rules let it go.
#[derive(Debug, Clone, Copy, Default)]
pub struct Retention {
    pub keep: Option<u64>,
    pub within: Option<u64>,
}

/// Folds the seqs `retention` lets go under a rebase signed by `signers` (the chain's keys),
/// after verifying the chain against `verifier`'s pinned keys.
pub fn prune(
    root: &Path,
    retention: Retention,
    verifier: &Verifier,
    signers: &[&dyn Signer],
    now: UnixTime,
    progress: Box<dyn Progress + Send>,
) -> Result<PruneSummary, ChainError> {
    let mut store = Store::open_writer(root)?;
    store.set_progress(progress);
    let keep_since = retention.within.map(|secs| UnixTime {
        secs: now.secs.saturating_sub(secs),
        nanos: now.nanos,
    });
    Ok(store.prune(&PruneOptions {
        keep: retention.keep,
        keep_since,
        keys: verifier.pinned(),
        secret: verifier.secret(),
        signers,
        time: now,
    })?)
}

/// Seconds in a duration written as a whole number with an optional unit: `90`, `45s`,
/// `30m`, `12h`, `7d`, `2w`.
pub fn parse_duration(arg: &'static str, text: &str) -> Result<u64, ChainError> {
    let bad = || ChainError::Arg {
        arg,
        expected: "a whole number with an optional unit s, m, h, d or w (\"7d\")".into(),
        found: text.to_owned(),
    };
    let (digits, unit) = match text.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&text[..i], Some(c)),
        _ => (text, None),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let scale = match unit {
        None | Some('s') => 1,
        Some('m') => 60,
        Some('h') => 3600,
        Some('d') => 86_400,
        Some('w') => 604_800,
        Some(_) => return Err(bad()),
    };
    n.checked_mul(scale).ok_or_else(bad)
}

/// Component files of a take, by kind: each `PATH` or `NAME=PATH`. Unnamed ones are called
/// after their kind, numbered from the second (`memory`, `memory1`, ...).
pub fn components(
    by_kind: &[(ComponentKind, &[String])],
) -> Result<Vec<ComponentInput>, ChainError> {
    let mut out = Vec::new();
    for (kind, list) in by_kind {
        for (i, spec) in list.iter().enumerate() {
            let (name, path) = match spec.split_once('=') {
                Some((n, p)) => (n.to_owned(), PathBuf::from(p)),
                None if i == 0 => (kind.name().to_owned(), PathBuf::from(spec)),
                None => (format!("{}{i}", kind.name()), PathBuf::from(spec)),
            };
            out.push(ComponentInput {
                name,
                kind: *kind,
                path,
                dirty: None,
            });
        }
    }
    if out.is_empty() {
        return Err(ChainError::Arg {
            arg: "components",
            expected: "at least one of --memory, --disk, --device-state, --config".into(),
            found: String::new(),
        });
    }
    Ok(out)
}

/// Applies `NAME=FILE` dirty lists: FILE lists page indices, one per line.
pub fn apply_dirty(inputs: &mut [ComponentInput], dirty: &[String]) -> Result<(), ChainError> {
    for spec in dirty {
        let Some((name, file)) = spec.split_once('=') else {
            return Err(ChainError::Arg {
                arg: "--dirty",
                expected: "NAME=FILE".into(),
                found: spec.clone(),
            });
        };
        let Some(input) = inputs.iter_mut().find(|c| c.name == name) else {
            let names: Vec<&str> = inputs.iter().map(|c| c.name.as_str()).collect();
            return Err(ChainError::Arg {
                arg: "--dirty",
                expected: format!("a component name ({})", names.join(", ")),
                found: name.to_owned(),
            });
        };
        let file = Path::new(file);
        let text = files::read_text(file, MAX_DIRTY_LIST, "dirty page list")?;
        let mut pages = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let p: u64 = line.parse().map_err(|_| ChainError::DirtyLine {
                file: file.to_path_buf(),
                line: n + 1,
                found: line.chars().take(64).collect(),
            })?;
            pages.push(PageIndex(p));
        }
        input.dirty = Some(pages);
    }
    Ok(())
}

/// A proof of pages `page..page+count` of `component` at `seq` (the head when `None`),
/// after verifying the chain up to there against the verifier's pinned keys.
pub fn prove(
    root: &Path,
    verifier: &Verifier,
    seq: Option<SeqNo>,
    component: &str,
    page: u64,
    count: u64,
) -> Result<(Verified, PageProof), ChainError> {
    let store = Store::open(root)?;
    // The restored state holds guest bytes: a new 0700 directory, removed on return.
    let dir = vmattest_qemu::private::owned_tempdir("vmattest-prove-", None)
        .map_err(|source| ChainError::TempDir { source })?;
    let restored = dir.path().join("state");
    let v = store.restore(&verifier.options(seq, None), &restored)?;
    let Some(c) = v.components.iter().find(|c| c.name == component) else {
        let names: Vec<&str> = v.components.iter().map(|c| c.name.as_str()).collect();
        return Err(ChainError::Arg {
            arg: "--component",
            expected: format!("a component of the chain ({})", names.join(", ")),
            found: component.to_owned(),
        });
    };
    let image = vmattest_image::MappedImage::open(&restored.join(&c.name)).map_err(|source| {
        ChainError::Image {
            component: component.to_owned(),
            source,
        }
    })?;
    let tree = ImageTree::build(
        store.params(),
        image.bytes(),
        &vmattest_core::tree::NoProgress,
    )
    .map_err(|source| ChainError::Tree {
        component: component.to_owned(),
        source,
    })?;
    let proof = tree
        .prove(image.bytes(), PageIndex(page), count)
        .map_err(|source| ChainError::Prove {
            component: component.to_owned(),
            source,
        })?;
    Ok((v, proof))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_refuse_the_rest() {
        for (text, secs) in [
            ("90", 90),
            ("45s", 45),
            ("30m", 1800),
            ("12h", 43_200),
            ("7d", 604_800),
            ("2w", 1_209_600),
        ] {
            assert_eq!(
                parse_duration("--keep-within", text).ok(),
                Some(secs),
                "{text}"
            );
        }
        for text in ["", "d", "7x", "-1d", "1.5h", "99999999999999999999d", "7 d"] {
            let e = parse_duration("--keep-within", text)
                .err()
                .map(|e| e.to_string());
            assert!(e.is_some_and(|e| e.contains("--keep-within")), "{text}");
        }
    }
}
