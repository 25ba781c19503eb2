//! Taking a snapshot: measure every component, find the changed pages, store their XOR deltas,
//! sign a link, and move HEAD.

use std::path::PathBuf;

use rayon::prelude::*;
use vmattest_core::alg::{PAGE_SIZE, PageIndex};
use vmattest_core::chain::{
    BatchRef, ComponentKind, ComponentRoot, DeltaEntry, Link, MAX_COMPONENTS, MAX_NAME_LEN,
    Manifest, PageChange, SeqNo, StateMeta, delta_digest, link_digest, state_root,
};
use vmattest_core::record::{SignatureEntry, Signed, UnixTime};
use vmattest_core::tree::{ImageTree, Progress};
use vmattest_image::MappedImage;
use vmattest_sign::Signer;

use crate::batch::{self, BATCH_PAGES};
use crate::cache::HeadPages;
use crate::crypt::{PageKey, StoreSecret};
use crate::{Head, Store, StoreError, fsio};

/// One component to capture.
#[derive(Debug, Clone)]
pub struct ComponentInput {
    pub name: String,
    pub kind: ComponentKind,
    pub path: PathBuf,
    /// Pages the caller knows may have changed; `None` means compare every page.
    pub dirty: Option<Vec<PageIndex>>,
}

pub struct TakeOptions<'a> {
    pub signers: &'a [&'a dyn Signer],
    pub time: UnixTime,
    pub secret: Option<&'a StoreSecret>,
    pub progress: &'a dyn Progress,
}

impl std::fmt::Debug for TakeOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TakeOptions")
            .field("time", &self.time)
            .finish_non_exhaustive()
    }
}

/// What a take produced.
#[derive(Debug, Clone)]
pub struct TakeSummary {
    pub seq: SeqNo,
    pub link: vmattest_core::alg::Digest,
    pub state_root: vmattest_core::alg::Digest,
    pub components: Vec<ComponentRoot>,
    pub changed_pages: u64,
    pub zero_pages: u64,
    pub total_pages: u64,
    /// Bytes of new batch objects (compressed page deltas).
    pub stored_bytes: u64,
    pub batches: usize,
}

/// A component name is also a file name on restore.
pub fn check_name(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(StoreError::Input(format!(
            "component name {name:?}: expected 1 to {MAX_NAME_LEN} characters of A-Z a-z 0-9 . _ -, not starting with '.'"
        )))
    }
}

pub(crate) fn is_zero(page: &[u8]) -> bool {
    // OR-folding fixed-size chunks vectorises; bail out at the first non-zero chunk.
    page.chunks(64)
        .all(|c| c.iter().fold(0u8, |a, &b| a | b) == 0)
}

impl Store {
    /// Captures the components as the next link. Needs the writer lock.
    pub fn take(
        &self,
        inputs: &[ComponentInput],
        opts: &TakeOptions<'_>,
    ) -> Result<TakeSummary, StoreError> {
        if self._lock.is_none() {
            return Err(StoreError::Input(
                "take needs the store opened for writing".into(),
            ));
        }
        if inputs.is_empty() || inputs.len() > MAX_COMPONENTS {
            return Err(StoreError::Input(format!(
                "{} components: expected 1 to {MAX_COMPONENTS}",
                inputs.len()
            )));
        }
        if opts.signers.is_empty() || opts.signers.len() > 8 {
            return Err(StoreError::Input("expected 1 to 8 signing keys".into()));
        }
        for (i, c) in inputs.iter().enumerate() {
            check_name(&c.name)?;
            if inputs[..i].iter().any(|o| o.name == c.name) {
                return Err(StoreError::Input(format!(
                    "component {}: named twice",
                    c.name
                )));
            }
        }
        let head = self.head()?;
        let prev = match head {
            Some(h) => {
                let link = self.read_link(h.seq)?;
                let manifest = self.read_manifest(link.value())?;
                Some((h, link, manifest))
            }
            None => None,
        };
        let images = inputs
            .iter()
            .map(|c| {
                MappedImage::open(&c.path).map_err(|e| StoreError::Image {
                    what: format!("component {}", c.name),
                    detail: e.to_string(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if let Some((_, _, m)) = &prev {
            check_same_shape(inputs, &images, &m.components)?;
        }
        let secret = match (self.meta.encrypted, opts.secret) {
            (true, None) => {
                return Err(StoreError::Secret("pass the secret file (--secret)".into()));
            }
            (true, Some(s)) => Some(s),
            (false, _) => None,
        };
        // Keys hang off the baseline's state root, known here unless this is the baseline.
        let baseline_root = match &prev {
            Some(_) => Some(self.read_link(SeqNo(0))?.value().state_root),
            None => None,
        };
        let cache_key = match (secret, baseline_root) {
            (Some(s), Some(r)) => Some(s.cache_key(r.as_bytes(), &self.meta.vm_id)),
            _ => None,
        };

        // The previous state: cached images and trees (rebuilt from the chain when stale).
        let old = match &prev {
            Some((h, _, m)) => Some(self.load_head_cache(h, m, secret, cache_key.as_ref())?),
            None => None,
        };
        let old_pages = match &old {
            Some(_) => (0..inputs.len())
                .map(|i| self.open_head_pages(i, cache_key.as_ref()))
                .collect::<Result<Vec<_>, _>>()?,
            None => Vec::new(),
        };

        let mut trees = Vec::with_capacity(inputs.len());
        let mut entries: Vec<DeltaEntry> = Vec::new();
        for (i, (input, image)) in inputs.iter().zip(&images).enumerate() {
            let bytes = image.bytes();
            let old_tree = old.as_ref().map(|t| &t[i]);
            let tree = match (&input.dirty, old_tree) {
                (Some(dirty), Some(t)) => {
                    let mut t = t.clone();
                    t.update_pages(bytes, dirty)
                        .map_err(|e| StoreError::Input(format!("component {}: {e}", input.name)))?;
                    t
                }
                _ => ImageTree::build(&self.params, bytes, opts.progress).map_err(|e| {
                    StoreError::Image {
                        what: format!("component {}", input.name),
                        detail: e.to_string(),
                    }
                })?,
            };
            let component = u16::try_from(i).unwrap_or(u16::MAX);
            entries.extend(
                changed_pages(&tree, old_tree, bytes)
                    .into_iter()
                    .map(|(p, zero)| DeltaEntry {
                        component,
                        page: PageIndex(p),
                        change: if zero {
                            PageChange::Zero
                        } else {
                            PageChange::Data
                        },
                        digest: tree
                            .page_digest(PageIndex(p))
                            .unwrap_or_else(|| self.params.alg().zero_digest()),
                    }),
            );
            trees.push(tree);
        }

        let seq = SeqNo(head.map_or(0, |h| h.seq.0 + 1));
        if let Some((_, link, _)) = &prev
            && opts.time < link.value().time
        {
            return Err(StoreError::Input(format!(
                "time {} is before the head's time {}; a chain's time never goes backwards",
                opts.time,
                link.value().time
            )));
        }
        let meta = StateMeta {
            vm_id: self.meta.vm_id.clone(),
            seq,
            time: opts.time,
            params: self.params.clone(),
            policy_id: self.meta.policy_id.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        };
        let components: Vec<ComponentRoot> = inputs
            .iter()
            .zip(&trees)
            .map(|(c, t)| ComponentRoot {
                name: c.name.clone(),
                kind: c.kind,
                len: t.len(),
                root: t.root(),
            })
            .collect();
        let root = state_root(&meta, &components);
        let baseline_root = baseline_root.unwrap_or(root);
        let key = secret.map(|s| s.page_key(baseline_root.as_bytes(), &self.meta.vm_id));
        let cache_key = secret.map(|s| s.cache_key(baseline_root.as_bytes(), &self.meta.vm_id));

        let (batches, stored_bytes) = self.write_batches(
            &mut entries,
            &images,
            &old_pages,
            old.as_deref().unwrap_or(&[]),
            key.as_ref(),
        )?;
        let manifest = Manifest {
            meta,
            components: components.clone(),
            entries,
            batches,
        };
        let manifest_id = self.write_object(&manifest.encode())?;
        self.sync_object_dir(&manifest_id)?;
        let link = Link {
            seq,
            prev: head.map_or(self.params.alg().zero_digest(), |h| h.link),
            delta: delta_digest(self.params.alg(), &manifest.entries),
            state_root: root,
            manifest: manifest_id,
            time: opts.time,
            key_ids: opts.signers.iter().map(|s| s.key_id()).collect(),
        };
        let mut signed = Signed::new(link).map_err(|e| StoreError::Input(e.to_string()))?;
        let message = signed.message();
        for s in opts.signers {
            let signature = s
                .sign(&message)
                .map_err(|e| StoreError::Input(format!("signing: {e}")))?;
            signed.signatures.push(SignatureEntry {
                alg: s.alg(),
                key_id: s.key_id(),
                signature,
            });
        }
        let bytes = signed
            .encode()
            .map_err(|e| StoreError::Input(e.to_string()))?;
        fsio::write_atomic(&self.link_path(seq), &bytes)?;
        let new_head = Head {
            seq,
            link: link_digest(&signed),
        };
        fail_point("before-head");
        self.set_head(new_head)?;
        fail_point("after-head");

        self.cache_invalidate()?;
        self.update_head_cache(&manifest, &images, old.is_some(), cache_key.as_ref())?;
        fail_point("before-stamp");
        self.cache_commit(&new_head, &trees)?;

        let zero_pages = manifest
            .entries
            .iter()
            .filter(|e| e.change == PageChange::Zero)
            .count() as u64;
        Ok(TakeSummary {
            seq,
            link: new_head.link,
            state_root: root,
            components,
            changed_pages: manifest.entries.len() as u64,
            zero_pages,
            total_pages: trees.iter().map(ImageTree::pages).sum(),
            stored_bytes,
            batches: manifest.batches.len(),
        })
    }

    /// XOR-delta batches of the data entries, compressed (and sealed) in parallel.
    fn write_batches(
        &self,
        entries: &mut [DeltaEntry],
        images: &[MappedImage],
        old: &[HeadPages<'_>],
        old_trees: &[ImageTree],
        key: Option<&PageKey>,
    ) -> Result<(Vec<BatchRef>, u64), StoreError> {
        let stored: Vec<usize> = (0..entries.len())
            .filter(|&i| entries[i].change.stored())
            .collect();
        // Runs of at most BATCH_PAGES pages that stay within one component.
        let mut runs: Vec<&[usize]> = Vec::new();
        let mut start = 0;
        for i in 1..=stored.len() {
            if i == stored.len()
                || i - start == BATCH_PAGES
                || entries[stored[i]].component != entries[stored[start]].component
            {
                runs.push(&stored[start..i]);
                start = i;
            }
        }
        let view: &[DeltaEntry] = entries;
        let results: Vec<Result<WrittenBatch, StoreError>> = runs
            .par_iter()
            .map(|run| {
                let mut raw = Vec::with_capacity(run.len() * PAGE_SIZE);
                let mut literal = Vec::with_capacity(run.len());
                for &i in *run {
                    let e = &view[i];
                    let c = usize::from(e.component);
                    let new = page_of(images[c].bytes(), e.page.0);
                    let Some(o) = old.get(c) else {
                        raw.extend_from_slice(new);
                        literal.push(true);
                        continue;
                    };
                    let prev = o.page(e.page.0);
                    // The cache is derived data: check it against its digests before use.
                    let want = old_trees.get(c).and_then(|t| t.page_digest(e.page));
                    if want != Some(self.params.page_digest(e.page, &prev)) {
                        return Err(StoreError::Corrupt {
                            file: self.cache_image(c),
                            detail: format!(
                                "page {} does not match its digest; `snapshot fsck --repair` discards the cache",
                                e.page
                            ),
                        });
                    }
                    let xor: Vec<u8> = new.iter().zip(prev.iter()).map(|(a, b)| a ^ b).collect();
                    let lit = prefer_literal(new, &xor);
                    raw.extend_from_slice(if lit { new } else { &xor });
                    literal.push(lit);
                }
                let bytes = batch::encode(&raw, key)?;
                let object = self.write_object(&bytes)?;
                let pages = u32::try_from(run.len()).unwrap_or(u32::MAX);
                Ok((BatchRef { object, pages }, bytes.len() as u64, literal))
            })
            .collect();
        let mut refs = Vec::with_capacity(results.len());
        let mut total = 0;
        for (run, r) in runs.iter().zip(results) {
            let (b, n, literal) = r?;
            for (&i, lit) in run.iter().zip(literal) {
                entries[i].change = if lit {
                    PageChange::Literal
                } else {
                    PageChange::Data
                };
            }
            refs.push(b);
            total += n;
        }
        self.sync_object_dirs()?;
        Ok((refs, total))
    }
}

/// A written batch, its size, and which of its pages were stored literally.
type WrittenBatch = (BatchRef, u64, Vec<bool>);

/// Whether a changed page compresses better as its new bytes than as the XOR with its old
/// bytes: an XOR that is mostly zeros (a small change) always wins; otherwise the lower
/// order-0 entropy decides (a page rewritten with unrelated, compressible content).
fn prefer_literal(new: &[u8], xor: &[u8]) -> bool {
    let zeros = xor.iter().filter(|&&b| b == 0).count();
    if zeros * 2 >= xor.len() {
        return false;
    }
    entropy(new) < entropy(xor)
}

/// Order-0 entropy in bits per byte.
fn entropy(bytes: &[u8]) -> f64 {
    let mut hist = [0u32; 256];
    for &b in bytes {
        hist[usize::from(b)] += 1;
    }
    let n = bytes.len().max(1) as f64;
    hist.iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum()
}

pub(crate) fn page_of(bytes: &[u8], page: u64) -> &[u8] {
    let start = usize::try_from(page)
        .unwrap_or(usize::MAX)
        .saturating_mul(PAGE_SIZE)
        .min(bytes.len());
    &bytes[start..(start + PAGE_SIZE).min(bytes.len())]
}

/// Changed pages with whether each is now all zeros. Without a previous tree, every non-zero
/// page counts as changed (the baseline is a delta from zeros).
fn changed_pages(tree: &ImageTree, old: Option<&ImageTree>, bytes: &[u8]) -> Vec<(u64, bool)> {
    let dlen = tree.alg().digest_len();
    let pages = tree.pages();
    const CHUNK: u64 = 4096;
    (0..pages.div_ceil(CHUNK))
        .into_par_iter()
        .flat_map_iter(|c| {
            let lo = c * CHUNK;
            let hi = (lo + CHUNK).min(pages);
            (lo..hi).filter_map(move |p| {
                let changed = match old {
                    Some(o) => {
                        let at = usize::try_from(p).unwrap_or(usize::MAX) * dlen;
                        tree.page_digests().get(at..at + dlen)
                            != o.page_digests().get(at..at + dlen)
                    }
                    None => true,
                };
                if !changed {
                    return None;
                }
                let zero = is_zero(page_of(bytes, p));
                (old.is_some() || !zero).then_some((p, zero))
            })
        })
        .collect()
}

fn check_same_shape(
    inputs: &[ComponentInput],
    images: &[MappedImage],
    prev: &[ComponentRoot],
) -> Result<(), StoreError> {
    let names = |v: Vec<&str>| v.join(", ");
    if inputs.len() != prev.len()
        || inputs
            .iter()
            .zip(prev)
            .any(|(a, b)| a.name != b.name || a.kind != b.kind)
    {
        return Err(StoreError::Input(format!(
            "components [{}]: the chain has [{}]; components are fixed at the baseline",
            names(inputs.iter().map(|c| c.name.as_str()).collect()),
            names(prev.iter().map(|c| c.name.as_str()).collect()),
        )));
    }
    for ((c, img), p) in inputs.iter().zip(images).zip(prev) {
        let len = img.bytes().len() as u64;
        if len != p.len {
            return Err(StoreError::Input(format!(
                "component {}: {len} bytes, the chain has {}; a component's size is fixed at the baseline",
                c.name, p.len
            )));
        }
    }
    Ok(())
}

/// Test hook: `VMATTEST_FAIL_AT=<point>` aborts the process there, as a crash would.
fn fail_point(point: &str) {
    if std::env::var("VMATTEST_FAIL_AT").is_ok_and(|v| v == point) {
        std::process::abort();
    }
}
