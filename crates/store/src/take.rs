//! Taking a snapshot: measure every component, find the changed pages, store their XOR deltas,
//! sign a link, and move HEAD.

use std::path::PathBuf;

use rayon::prelude::*;
use vmattest_core::alg::{PAGE_SIZE, PageIndex};
use vmattest_core::chain::{
    Announce, BatchRef, ComponentKind, ComponentRoot, DeltaEntry, Link, MAX_COMPONENTS,
    MAX_NAME_LEN, Manifest, PageChange, SeqNo, StateMeta, delta_digest, is_valid_name, link_digest,
    state_root,
};
use vmattest_core::record::{Signable, SignatureEntry, Signed, UnixTime};
use vmattest_core::tree::{ImageTree, in_hole};
use vmattest_image::MappedImage;
use vmattest_sign::{PublicKey, Signer};

use crate::anchor::{self, Pages};
use crate::batch::{self, BATCH_PAGES};
use crate::cache::{CacheWriter, HeadPages};
use crate::crypt::{PageKey, StoreSecret};
use crate::pages::{is_zero, page_of};
use crate::{Head, StoreError, StoreWriter};

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
    /// Make this link an anchor whatever the store's interval.
    pub anchor: bool,
    /// Keys the chain rotates to: they sign this link beside the keys in force, and sign in
    /// their place from the next link on.
    pub rotate_to: &'a [&'a dyn Signer],
    /// Keys allowed to revoke the chain's keys; announced by the baseline only.
    pub revokers: &'a [PublicKey],
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
    /// Whether the link is an anchor, and how many unchanged pages it stored for that.
    pub anchor: bool,
    pub carried_pages: u64,
}

/// A component name is also a file name on restore.
pub fn check_name(name: &str) -> Result<(), StoreError> {
    if is_valid_name(name, MAX_NAME_LEN) {
        Ok(())
    } else {
        Err(StoreError::Input(format!(
            "component name {name:?}: expected 1 to {MAX_NAME_LEN} characters of A-Z a-z 0-9 . _ -, not starting with '.'"
        )))
    }
}

/// A promise that nothing writes the component files while the value lives: a paused guest.
/// [`StoreWriter::freeze`] maps the files and reads them as byte slices; it takes guest RAM
/// only under such a promise, and copies the changed pages out before it returns.
///
/// # Safety
///
/// An implementor guarantees that from its creation until it is dropped no process writes
/// the files it is given for; a slice over a mapping whose bytes change is undefined behaviour.
#[allow(unsafe_code)]
pub unsafe trait Quiescent {}

/// How long the component files stay as they are.
#[derive(Clone, Copy)]
pub enum Hold<'a> {
    /// Until [`StoreWriter::commit`]: files nobody writes (images, a stopped guest's files).
    /// They stay mapped, and nothing is copied.
    UntilCommit,
    /// Only while `paused` lives (a running guest's RAM): the changed pages are copied out
    /// before `freeze` returns, so that the guest may run on before the commit.
    WhilePaused(&'a dyn Quiescent),
}

impl std::fmt::Debug for Hold<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Hold::UntilCommit => "UntilCommit",
            Hold::WhilePaused(_) => "WhilePaused",
        })
    }
}

/// Where the bytes of the captured pages live between [`Store::freeze`] and [`Store::commit`].
#[derive(Debug)]
pub(crate) enum Source {
    /// The component files themselves, which must not change until the commit.
    Mapped(Vec<MappedImage>),
    /// The changed pages, copied out so that the files (a running VM's RAM) may change.
    Copied {
        lens: Vec<u64>,
        data: Vec<u8>,
        /// Byte range in `data` of each entry's page; empty for zero pages.
        spans: Vec<(usize, usize)>,
        /// Kept only so that unmapping (milliseconds for guest RAM) waits for the commit.
        _maps: Vec<MappedImage>,
    },
}

static ZERO_PAGE: [u8; PAGE_SIZE] = [0; PAGE_SIZE];

impl Source {
    fn len(&self, c: usize) -> u64 {
        match self {
            Source::Mapped(images) => images.get(c).map_or(0, |i| i.bytes().len() as u64),
            Source::Copied { lens, .. } => lens.get(c).copied().unwrap_or(0),
        }
    }

    /// The new bytes of entry `i` (a full page, or the short last page).
    pub(crate) fn page(&self, i: usize, e: &DeltaEntry) -> &[u8] {
        let c = usize::from(e.component);
        match self {
            Source::Mapped(images) => images
                .get(c)
                .map_or(&[][..], |m| page_of(m.bytes(), e.page.0)),
            Source::Copied { data, spans, .. } => match spans.get(i) {
                Some(&(a, b)) if b > a => &data[a..b],
                _ => {
                    let left = self.len(c).saturating_sub(e.page.0 * PAGE_SIZE as u64);
                    &ZERO_PAGE[..usize::try_from(left).unwrap_or(PAGE_SIZE).min(PAGE_SIZE)]
                }
            },
        }
    }

    /// Page `p` of component `c` when the component files stay mapped until the commit.
    pub(crate) fn mapped_page(&self, c: usize, p: u64) -> Option<&[u8]> {
        match self {
            Source::Mapped(images) => images.get(c).map(|m| page_of(m.bytes(), p)),
            Source::Copied { .. } => None,
        }
    }

    /// The whole image of component `c`; materialised from the pages when they were copied.
    fn image(&self, c: usize, entries: &[DeltaEntry]) -> std::borrow::Cow<'_, [u8]> {
        match self {
            Source::Mapped(images) => {
                std::borrow::Cow::Borrowed(images.get(c).map_or(&[][..], MappedImage::bytes))
            }
            Source::Copied { .. } => {
                let len = usize::try_from(self.len(c)).unwrap_or(usize::MAX);
                // calloc'd: untouched zero pages cost no memory.
                let mut out = vec![0u8; len];
                let component = u16::try_from(c).unwrap_or(u16::MAX);
                for (i, e) in entries.iter().enumerate() {
                    if e.component == component {
                        let page = self.page(i, e);
                        let at = usize::try_from(e.page.0).unwrap_or(usize::MAX) * PAGE_SIZE;
                        out[at..at + page.len()].copy_from_slice(page);
                    }
                }
                std::borrow::Cow::Owned(out)
            }
        }
    }
}

/// A measured state waiting to be committed as the next link: trees, changed pages and their
/// bytes. Splitting a take in two lets a VM run again as soon as its pages are copied out.
#[derive(Debug)]
pub struct Frozen {
    head: Option<Head>,
    components: Vec<(String, ComponentKind)>,
    old_trees: Option<Vec<ImageTree>>,
    trees: Vec<ImageTree>,
    entries: Vec<DeltaEntry>,
    source: Source,
}

impl StoreWriter {
    /// Captures the components as the next link.
    pub fn take(
        &self,
        inputs: &[ComponentInput],
        opts: &TakeOptions<'_>,
    ) -> Result<TakeSummary, StoreError> {
        let frozen = self.freeze(inputs, opts.secret, Hold::UntilCommit)?;
        self.commit(frozen, opts)
    }

    /// Measures the components against the head and finds the changed pages; `hold` says
    /// whether their bytes must be copied out before the files may change.
    pub fn freeze(
        &self,
        inputs: &[ComponentInput],
        secret: Option<&StoreSecret>,
        hold: Hold<'_>,
    ) -> Result<Frozen, StoreError> {
        if inputs.is_empty() || inputs.len() > MAX_COMPONENTS {
            return Err(StoreError::Input(format!(
                "{} components: expected 1 to {MAX_COMPONENTS}",
                inputs.len()
            )));
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
                let m = self.manifest_at(&h, h.seq)?;
                self.check_meta_bound(&m)?;
                Some((h, m))
            }
            None => None,
        };
        let images = inputs
            .iter()
            .map(|c| {
                MappedImage::open(&c.path).map_err(|error| StoreError::Image {
                    what: format!("component {}", c.name),
                    error,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if let Some((_, m)) = &prev {
            check_same_shape(inputs, &images, &m.components)?;
        }
        let secret = self.secret_for(secret)?;
        let cache_key = match (secret, &prev) {
            (Some(s), Some((h, _))) => {
                let origin = self.origin_root(h)?;
                Some(s.cache_key(origin.as_bytes(), &self.meta.vm_id))
            }
            _ => None,
        };
        // The previous state's trees (its cache is rebuilt from the chain when stale).
        let old_trees = match &prev {
            Some((h, m)) => Some(self.load_head_cache(h, m, secret, cache_key.as_ref())?),
            None => None,
        };

        let mut trees = Vec::with_capacity(inputs.len());
        let mut entries: Vec<DeltaEntry> = Vec::new();
        for (i, (input, image)) in inputs.iter().zip(&images).enumerate() {
            let bytes = image.bytes();
            // Holes of sparse files read as zeros: they are hashed and scanned without faulting
            // a page in (a guest's untouched RAM, a disk's unwritten blocks).
            let holes: Vec<std::ops::Range<u64>> =
                image.holes().into_iter().map(|r| r.first..r.end).collect();
            let old_tree = old_trees.as_ref().map(|t| &t[i]);
            let tree = match (&input.dirty, old_tree) {
                (Some(dirty), Some(t)) => {
                    let mut t = t.clone();
                    t.update_pages(bytes, dirty)
                        .map_err(|e| StoreError::Input(format!("component {}: {e}", input.name)))?;
                    t
                }
                _ => ImageTree::build_with_holes(&self.params, bytes, &holes, self.progress())
                    .map_err(|e| StoreError::Input(format!("component {}: {e}", input.name)))?,
            };
            entries.extend(delta_entries(i, &tree, old_tree, bytes, &holes));
            trees.push(tree);
        }
        let source = match hold {
            Hold::WhilePaused(_) => copy_pages(images, &entries),
            Hold::UntilCommit => Source::Mapped(images),
        };
        Ok(Frozen {
            head,
            components: inputs.iter().map(|c| (c.name.clone(), c.kind)).collect(),
            old_trees,
            trees,
            entries,
            source,
        })
    }

    fn secret_for<'s>(
        &self,
        secret: Option<&'s StoreSecret>,
    ) -> Result<Option<&'s StoreSecret>, StoreError> {
        match (self.meta.encrypted, secret) {
            (true, None) => Err(StoreError::Secret("pass the secret file (--secret)".into())),
            (true, Some(s)) => Ok(Some(s)),
            (false, _) => Ok(None),
        }
    }

    /// Stores a frozen state's pages, signs its link and moves HEAD to it.
    pub fn commit(
        &self,
        frozen: Frozen,
        opts: &TakeOptions<'_>,
    ) -> Result<TakeSummary, StoreError> {
        let Frozen {
            head,
            components: names,
            old_trees,
            trees,
            entries,
            source,
        } = frozen;
        if opts.signers.is_empty() || opts.signers.len() > 8 {
            return Err(StoreError::Input("expected 1 to 8 signing keys".into()));
        }
        if self.head()? != head {
            return Err(StoreError::Input(
                "the head moved since the state was measured".into(),
            ));
        }
        let secret = self.secret_for(opts.secret)?;
        let prev_link = match head {
            Some(h) => Some(self.read_link(h.seq)?),
            None => None,
        };
        let signers = self.link_signers(prev_link.as_ref(), opts)?;
        let seq = SeqNo(head.map_or(0, |h| h.seq.0 + 1));
        if let Some(link) = &prev_link
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
        let components: Vec<ComponentRoot> = names
            .iter()
            .zip(&trees)
            .map(|((name, kind), t)| ComponentRoot {
                name: name.clone(),
                kind: *kind,
                len: t.len(),
                root: t.root(),
            })
            .collect();
        let root = state_root(&meta, &components);
        let baseline_root = match &head {
            Some(h) => self.origin_root(h)?,
            None => root,
        };
        let key = secret.map(|s| s.page_key(baseline_root.as_bytes(), &self.meta.vm_id));
        let cache_key = secret.map(|s| s.cache_key(baseline_root.as_bytes(), &self.meta.vm_id));
        let open_old = || match &old_trees {
            Some(t) => self.open_head_images(t, cache_key.as_ref()),
            None => Ok(Vec::new()),
        };
        let mut carried = self.anchor_pages(head.as_ref(), seq, &entries, opts.anchor)?;
        let mut old_pages = open_old();
        if let (Some(h), Some(old)) = (&head, &old_trees) {
            // The XOR deltas and an anchor's carried pages read these pages' previous bytes
            // from the cache (checked here, after a VM resumed, rather than in its pause); a
            // missing or wrong cache is rebuilt.
            let mut pages = vec![Vec::new(); old.len()];
            for e in entries.iter().filter(|e| e.change == PageChange::Data) {
                pages[usize::from(e.component)].push(e.page.0);
            }
            for &(c, p) in carried.iter().flatten() {
                if let Some(list) = pages.get_mut(usize::from(c)) {
                    list.push(p);
                }
            }
            if !old_pages
                .as_ref()
                .is_ok_and(|o| self.pages_match(old, o, &pages))
            {
                // Unmapped before the rebuild rewrites the files.
                if let Ok(o) = &mut old_pages {
                    o.clear();
                }
                self.rebuild_head_cache(h, secret, cache_key.as_ref())?;
                old_pages = open_old();
            }
        }
        let old_pages = old_pages?;
        if carried
            .as_ref()
            .is_some_and(|c| !StoreWriter::can_carry(c, &old_pages, &source))
        {
            if opts.anchor {
                return Err(StoreError::Input(
                    "an anchor needs the head cache or the component files until the commit; \
                     this store keeps no images and the capture copied only the changed pages"
                        .into(),
                ));
            }
            carried = None;
        }
        let (mut entries, origin) = match carried {
            Some(c) => {
                let (e, o) = anchor::merge(entries, &c, &trees, &source, &old_pages);
                (e, Some(o))
            }
            None => (entries, None),
        };
        let pages = match &origin {
            Some(o) => Pages::carrying(&source, &old_pages, o),
            None => Pages::captured(&source),
        };
        // An anchor stores no XORs: it is applied without the links before it.
        let xor_from: &[Option<HeadPages<'_>>] = match &origin {
            Some(_) => &[],
            None => &old_pages,
        };

        // New pages go into the cache as their batches are built; a take that stops before
        // the stamp leaves the cache to be rebuilt from the chain.
        let cache = match &old_trees {
            Some(t) => Some(self.cache_writer(t, seq, cache_key.as_ref())?),
            None => None,
        };
        let (batches, stored_bytes) =
            self.write_batches(&mut entries, &pages, xor_from, cache.as_ref(), key.as_ref())?;
        // The cache and its versions change only for the pages captured at this seq.
        let captured_only: Option<Vec<DeltaEntry>> = origin.as_ref().map(|_| {
            (entries.iter().enumerate())
                .filter(|(i, _)| !pages.is_carried(*i))
                .map(|(_, e)| e.clone())
                .collect()
        });
        if let Some(w) = &cache {
            for (i, e) in entries.iter().enumerate() {
                if e.change == PageChange::Zero && !pages.is_carried(i) {
                    w.write(usize::from(e.component), e.page.0, &pages.get(i, e))?;
                }
            }
            if cache_key.is_some() {
                self.cache_set_versions(captured_only.as_deref().unwrap_or(&entries), &trees, seq)?;
            }
        }
        let manifest = Manifest {
            meta,
            components: components.clone(),
            entries,
            batches,
            anchor: origin.is_some(),
        };
        let changed = captured_only.as_deref().unwrap_or(&manifest.entries);
        let manifest_id = self.write_object(&manifest.encode())?;
        self.sync_object_dir(&manifest_id)?;
        let link = Link {
            seq,
            prev: head.map_or(self.params.alg().zero_digest(), |h| h.link),
            delta: delta_digest(self.params.alg(), &manifest.entries),
            state_root: root,
            manifest: manifest_id,
            time: opts.time,
            key_ids: signers.iter().map(|s| s.key_id()).collect(),
            announce: Announce {
                signers: opts
                    .rotate_to
                    .iter()
                    .map(|s| s.public_key().to_chain_key())
                    .collect(),
                revokers: opts.revokers.iter().map(PublicKey::to_chain_key).collect(),
            },
        };
        let signed = sign_with(link, &signers)?;
        let bytes = signed
            .encode()
            .map_err(|e| StoreError::Input(e.to_string()))?;
        self.dir.write_file(&self.link_path(seq), &bytes, true)?;
        let new_head = Head {
            seq,
            link: link_digest(&signed),
            base: head.map_or(SeqNo(0), |h| h.base),
        };
        fail_point("before-head");
        self.set_head(new_head)?;
        fail_point("after-head");

        if cache.is_none() {
            // A baseline (never an anchor): the entries are the captured ones.
            // Only the images the cache keeps are assembled.
            let images: Vec<_> = (0..trees.len())
                .map(|c| {
                    self.keeps_image(trees[c].len())
                        .then(|| source.image(c, &manifest.entries))
                })
                .collect();
            self.write_cache_images(&images, seq, cache_key.as_ref())?;
        }
        fail_point("before-stamp");
        self.cache_commit(&new_head, &trees, cache.is_some().then_some(changed))?;
        if seq == SeqNo(0) {
            self.keep_base_digests(&trees, Some(&trees))?;
        }

        let zero_pages = changed
            .iter()
            .filter(|e| e.change == PageChange::Zero)
            .count() as u64;
        Ok(TakeSummary {
            seq,
            link: new_head.link,
            state_root: root,
            components,
            changed_pages: changed.len() as u64,
            zero_pages,
            total_pages: trees.iter().map(ImageTree::pages).sum(),
            stored_bytes,
            batches: manifest.batches.len(),
            anchor: manifest.anchor,
            carried_pages: (manifest.entries.len() - changed.len()) as u64,
        })
    }

    /// XOR-delta batches of the data entries, compressed (and sealed) in parallel.
    pub(crate) fn write_batches(
        &self,
        entries: &mut [DeltaEntry],
        pages: &Pages<'_, '_>,
        old: &[Option<HeadPages<'_>>],
        cache: Option<&CacheWriter<'_>>,
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
                    let new = pages.get(i, e);
                    let new = &new[..];
                    let Some(o) = old.get(c).and_then(Option::as_ref) else {
                        raw.extend_from_slice(new);
                        literal.push(true);
                        continue;
                    };
                    let prev = o.page(e.page.0);
                    let xor: Vec<u8> = new.iter().zip(prev.iter()).map(|(a, b)| a ^ b).collect();
                    let lit = prefer_literal(new, &xor);
                    raw.extend_from_slice(if lit { new } else { &xor });
                    literal.push(lit);
                }
                if let Some(w) = cache {
                    for &i in run.iter().filter(|&&i| !pages.is_carried(i)) {
                        let e = &view[i];
                        w.write(usize::from(e.component), e.page.0, &pages.get(i, e))?;
                    }
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
                if entries[i].change == PageChange::Carried {
                    continue;
                }
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

/// Signs `value` with every signer (a link, a rebase).
pub(crate) fn sign_with<T: Signable>(
    value: T,
    signers: &[&dyn Signer],
) -> Result<Signed<T>, StoreError> {
    let mut signed = Signed::new(value).map_err(|e| StoreError::Input(e.to_string()))?;
    let message = signed.message();
    for s in signers {
        let signature = s
            .sign(&message)
            .map_err(|e| StoreError::Input(format!("signing: {e}")))?;
        signed.signatures.push(SignatureEntry {
            alg: s.alg(),
            key_id: s.key_id(),
            signature,
        });
    }
    Ok(signed)
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

/// The delta entries of component `component` against `old` (against all-zero images when
/// `None`): its changed pages, each data or now zero, with its new digest.
pub(crate) fn delta_entries(
    component: usize,
    tree: &ImageTree,
    old: Option<&ImageTree>,
    bytes: &[u8],
    holes: &[std::ops::Range<u64>],
) -> Vec<DeltaEntry> {
    let c = u16::try_from(component).unwrap_or(u16::MAX);
    changed_pages(tree, old, bytes, holes)
        .into_iter()
        .map(|(p, zero)| DeltaEntry {
            component: c,
            page: PageIndex(p),
            change: if zero {
                PageChange::Zero
            } else {
                PageChange::Data
            },
            digest: tree
                .page_digest(PageIndex(p))
                .unwrap_or_else(|| tree.alg().zero_digest()),
        })
        .collect()
}

/// Changed pages with whether each is now all zeros. Without a previous tree, every non-zero
/// page counts as changed (the baseline is a delta from zeros).
fn changed_pages(
    tree: &ImageTree,
    old: Option<&ImageTree>,
    bytes: &[u8],
    holes: &[std::ops::Range<u64>],
) -> Vec<(u64, bool)> {
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
                let zero = in_hole(holes, p, 1) || is_zero(page_of(bytes, p));
                (old.is_some() || !zero).then_some((p, zero))
            })
        })
        .collect()
}

/// Copies the bytes of every changed non-zero page, in entry order.
fn copy_pages(images: Vec<MappedImage>, entries: &[DeltaEntry]) -> Source {
    let mut data = Vec::with_capacity(
        entries
            .iter()
            .filter(|e| e.change != PageChange::Zero)
            .count()
            * PAGE_SIZE,
    );
    let spans = entries
        .iter()
        .map(|e| {
            if e.change == PageChange::Zero {
                return (0, 0);
            }
            let page = images
                .get(usize::from(e.component))
                .map_or(&[][..], |m| page_of(m.bytes(), e.page.0));
            let at = data.len();
            data.extend_from_slice(page);
            (at, data.len())
        })
        .collect();
    Source::Copied {
        lens: images.iter().map(|m| m.bytes().len() as u64).collect(),
        data,
        spans,
        _maps: images,
    }
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

/// Test hook, only with the `fault-injection` feature: `VMATTEST_FAIL_AT=<point>` aborts the
/// process there, as a crash would.
#[cfg(feature = "fault-injection")]
pub(crate) fn fail_point(point: &str) {
    if std::env::var("VMATTEST_FAIL_AT").is_ok_and(|v| v == point) {
        std::process::abort();
    }
}

#[cfg(not(feature = "fault-injection"))]
pub(crate) fn fail_point(_point: &str) {}
