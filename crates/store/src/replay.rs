//! Verified reconstruction: check every link up to a seq (signature, previous digest, time,
//! manifest, delta digest, state root), rebuild every component from the page batches, and
//! check the rebuilt bytes against the page digests the links commit to.

use std::fs::File;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use vmattest_core::alg::{Digest, PAGE_SIZE, PageIndex, page_count};
use vmattest_core::chain::{
    ComponentRoot, Manifest, ObjectId, PageChange, SeqNo, SignedLink, SignedRebase, delta_digest,
    link_digest, state_root,
};
use vmattest_core::record::UnixTime;
use vmattest_core::tree::ImageTree;
use vmattest_core::wire::{HEADER_LEN, Kind};
use vmattest_sign::PublicKey;
use vmattest_sign::record::verify_signed;

use vmattest_image::MappedImage;

use crate::crypt::StoreSecret;
use crate::dir::{Access, Dir, TempDir, memory_file};
use crate::keys::{KeyWalk, NamedRevocation};
use crate::pages::{ObjectFn, idx};
use crate::rebuild::{Decoder, REGION_PAGES, Rebuild, Scratch};
use crate::{Broken, Store, StoreError};

/// The public keys every link must be signed by. Never empty: a verification through this
/// crate always checks signatures against keys its caller chose.
#[derive(Debug, Clone)]
pub struct PinnedKeys(Vec<PublicKey>);

impl PinnedKeys {
    pub fn new(keys: Vec<PublicKey>) -> Result<PinnedKeys, StoreError> {
        if keys.is_empty() {
            return Err(StoreError::Input(
                "no public key pinned: verifying a chain needs at least one".into(),
            ));
        }
        Ok(PinnedKeys(keys))
    }

    pub fn keys(&self) -> &[PublicKey] {
        &self.0
    }
}

/// How far and how strictly to verify, restore or import.
#[derive(Debug, Clone, Copy)]
pub struct ReplayOptions<'a> {
    /// Last seq to rebuild; the head when `None`.
    pub upto: Option<SeqNo>,
    pub keys: &'a PinnedKeys,
    pub secret: Option<&'a StoreSecret>,
    /// Refuse a last link older than `secs` seconds before `now`.
    pub max_age: Option<(UnixTime, u64)>,
    /// Revocations from outside the store, honoured with the store's own.
    pub revocations: &'a [NamedRevocation],
}

impl<'a> ReplayOptions<'a> {
    /// The whole chain against `keys`, no secret, no age limit.
    pub fn new(keys: &'a PinnedKeys) -> ReplayOptions<'a> {
        ReplayOptions {
            upto: None,
            keys,
            secret: None,
            max_age: None,
            revocations: &[],
        }
    }
}

/// A replay as this crate runs it. Only the store's own cache rebuild goes without keys: it is
/// bound to HEAD by link digests and content addresses, and its output is derived data.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan<'a> {
    pub upto: Option<SeqNo>,
    pub keys: Option<&'a [PublicKey]>,
    pub secret: Option<&'a StoreSecret>,
    pub max_age: Option<(UnixTime, u64)>,
    pub revocations: &'a [NamedRevocation],
}

impl<'a> From<&ReplayOptions<'a>> for Plan<'a> {
    fn from(o: &ReplayOptions<'a>) -> Plan<'a> {
        Plan {
            upto: o.upto,
            keys: Some(o.keys.keys()),
            secret: o.secret,
            max_age: o.max_age,
            revocations: o.revocations,
        }
    }
}

/// The verified end state.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The chain's first seq (above 0 after a prune).
    pub base: SeqNo,
    pub seq: SeqNo,
    pub link: Digest,
    pub state_root: Digest,
    pub time: UnixTime,
    pub components: Vec<ComponentRoot>,
}

/// Where links and objects come from: the store itself, or a store plus a staged import.
pub(crate) struct Source<'a> {
    /// From the chain's first seq; after a prune, `links[0]` is the rebase's embedded link.
    pub links: Vec<SignedLink>,
    /// The rebase the chain starts with, if it was pruned.
    pub rebase: Option<SignedRebase>,
    pub object: &'a ObjectFn<'a>,
    /// Copy the last seq's bytes from the head cache instead of decoding the chain. They are
    /// hashed after the copy like rebuilt bytes, and rebuilt when they do not match.
    pub from_cache: bool,
}

impl Source<'_> {
    /// The manifest of `links[k]`: for a rebase's link, the rebase's full manifest.
    fn manifest_id(&self, k: usize) -> ObjectId {
        match &self.rebase {
            Some(r) if k == 0 => r.value().manifest,
            _ => self.links[k].value().manifest,
        }
    }
}

pub(crate) type NameFn<'a> = dyn Fn(usize, &ComponentRoot) -> String + 'a;

/// Where a replay writes the images it rebuilds.
pub(crate) enum Outputs<'a> {
    /// Files named by `name` in `dir`, 0600 (an existing file is replaced, never followed).
    Dir { dir: &'a Dir, name: &'a NameFn<'a> },
    /// Anonymous memory files: the plaintext images of an encrypted store never reach a disk.
    Memory,
}

/// The rebuilt images, open, with the names used in messages.
pub(crate) type OutputFiles = Vec<(File, PathBuf)>;

impl Store {
    /// Verifies the chain up to `opts.upto` without keeping the rebuilt images.
    pub fn verify(&self, opts: &ReplayOptions<'_>) -> Result<Verified, StoreError> {
        if self.meta.encrypted {
            return Ok(self.replay_into(&opts.into(), &Outputs::Memory, false)?.0);
        }
        let tmp = self.tmp_dir("verify")?;
        let name = |i: usize, _: &ComponentRoot| format!("{i}.img");
        let out = Outputs::Dir {
            dir: tmp.dir(),
            name: &name,
        };
        Ok(self.replay_into(&opts.into(), &out, false)?.0)
    }

    /// Verifies and writes every component at `opts.upto` into `out` (created; must not
    /// exist), named after the components. Nothing is left in `out` if verification fails.
    pub fn restore(&self, opts: &ReplayOptions<'_>, out: &Path) -> Result<Verified, StoreError> {
        if out.symlink_metadata().is_ok() {
            return Err(StoreError::Input(format!(
                "{}: already exists; restore writes a new directory",
                out.display()
            )));
        }
        let Some(out_name) = out.file_name() else {
            return Err(StoreError::Input(format!(
                "{}: expected a new directory's name",
                out.display()
            )));
        };
        let parent = out
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        // A private directory (0700, files 0600) that appears whole or not at all.
        let staging = TempDir::new_in(Dir::open_root(parent)?, ".vmattest-restore")?;
        let name = |_: usize, c: &ComponentRoot| c.name.clone();
        let outputs = Outputs::Dir {
            dir: staging.dir(),
            name: &name,
        };
        // Like `cp`, the restored files are not fsynced; the rename is.
        let (v, _, files) = self.replay_into(&opts.into(), &outputs, true)?;
        drop(files);
        staging.persist(out_name)?;
        Ok(v)
    }

    pub(crate) fn replay_into(
        &self,
        opts: &Plan<'_>,
        outputs: &Outputs<'_>,
        use_cache: bool,
    ) -> Result<(Verified, Vec<ImageTree>, OutputFiles), StoreError> {
        let head = self
            .head()?
            .ok_or_else(|| StoreError::Input("the store has no snapshots yet".into()))?;
        let upto = opts.upto.unwrap_or(head.seq);
        if upto > head.seq {
            return Err(StoreError::Input(format!(
                "seq {upto}: the head is seq {}",
                head.seq
            )));
        }
        if upto < head.base {
            return Err(StoreError::Input(format!(
                "seq {upto} was pruned: the chain starts at seq {}",
                head.base
            )));
        }
        let (rebase, links) = self.links_upto(&head, upto)?;
        if upto == head.seq && link_digest(&links[links.len() - 1]) != head.link {
            return Err(StoreError::Verification {
                seq: upto,
                broken: Broken::HeadDigest,
            });
        }
        let object = |id: &ObjectId, max: usize| self.read_object(id, max);
        // The head's bytes are already in the head cache (plain in an unencrypted store).
        let from_cache = use_cache && upto == head.seq && self.head_in_cache(&head);
        self.replay_source(
            &Source {
                links,
                rebase,
                object: &object,
                from_cache,
            },
            opts,
            outputs,
        )
    }

    pub(crate) fn replay_source(
        &self,
        src: &Source<'_>,
        opts: &Plan<'_>,
        outputs: &Outputs<'_>,
    ) -> Result<(Verified, Vec<ImageTree>, OutputFiles), StoreError> {
        let last = &src.links[src.links.len() - 1];
        let key = match (self.meta.encrypted, opts.secret) {
            (false, _) => None,
            (true, None) => {
                return Err(StoreError::Secret("pass the secret file (--secret)".into()));
            }
            (true, Some(s)) => {
                let origin = match &src.rebase {
                    Some(r) => r.value().origin_root,
                    None => src.links[0].value().state_root,
                };
                Some(s.page_key(origin.as_bytes(), &self.meta.vm_id))
            }
        };
        // A head restore copies bytes that do not depend on the links, so the copy starts at
        // once, beside the link checks; a decoding replay needs the checked manifests first.
        let (manifests, early) = if src.from_cache {
            let comps = self.last_components(src)?;
            let files = self.create_outputs(outputs, &comps)?;
            let (checked, copied) = rayon::join(
                || -> Result<_, StoreError> {
                    let m = self.check_links(src, opts)?;
                    let rb = Rebuild::new(self, &m, key.as_ref(), src.object);
                    let trees = self.digest_trees(&rb, &m)?;
                    Ok((m, trees))
                },
                || self.copy_head(&comps, &files),
            );
            let (manifests, trees) = checked?;
            // A cache that could not be copied (missing, or cut short by a writer rebuilding
            // it) is stale like a damaged one: the head is decoded instead.
            (manifests, Some((comps, files, copied.ok(), trees)))
        } else {
            (self.check_links(src, opts)?, None)
        };
        let comps = &manifests[0].components;
        let image_bytes: u64 = comps.iter().map(|c| c.len).sum();
        let delta_bytes: u64 = manifests
            .iter()
            .map(|m| m.data_pages() as u64 * PAGE_SIZE as u64)
            .sum();
        self.progress().set_total(delta_bytes + image_bytes);
        let rb = Rebuild::new(self, &manifests, key.as_ref(), src.object);

        let (trees, files, regions) = match early {
            Some((copied_comps, files, regions, trees)) => {
                if copied_comps != manifests[manifests.len() - 1].components {
                    return Err(StoreError::Verification {
                        seq: last.value().seq,
                        broken: Broken::HeadChanged,
                    });
                }
                // A stale or damaged cache is not the chain's fault: decode instead.
                let regions = match regions {
                    Some(r)
                        if r.iter().all(|(i, first, leaves)| {
                            rb.check_region(*i, *first, leaves, &trees[*i]).is_ok()
                        }) =>
                    {
                        r
                    }
                    _ => {
                        // The copy left the cache's bytes behind, and a rebuild leaves zero
                        // runs as holes: start again from empty files.
                        for ((f, path), c) in files.iter().zip(comps) {
                            f.set_len(0)
                                .and_then(|()| f.set_len(c.len))
                                .map_err(|error| StoreError::Io {
                                    path: path.clone(),
                                    error,
                                })?;
                        }
                        rebuild_all(&rb, comps, &files)?
                    }
                };
                (trees, files, regions)
            }
            None => {
                let files = self.create_outputs(outputs, comps)?;
                // The two halves are independent until the end, so they run side by side: the
                // roots at every seq from the signed digests, and the bytes at the last seq.
                let (trees, regions) = rayon::join(
                    || self.digest_trees(&rb, &manifests),
                    || rebuild_all(&rb, comps, &files),
                );
                (trees?, files, regions?)
            }
        };
        for (i, first, leaves) in regions {
            rb.check_region(i, first, &leaves, &trees[i])?;
        }
        let l = last.value();
        Ok((
            Verified {
                base: src.links[0].value().seq,
                seq: l.seq,
                link: link_digest(last),
                state_root: l.state_root,
                time: l.time,
                components: manifests[manifests.len() - 1].components.clone(),
            },
            trees,
            files,
        ))
    }

    /// The components of the last link's manifest, read ahead of the link checks (which
    /// read it again and compare it with the baseline's).
    fn last_components(&self, src: &Source<'_>) -> Result<Vec<ComponentRoot>, StoreError> {
        let k = src.links.len() - 1;
        let bad = |broken| StoreError::Verification {
            seq: src.links[k].value().seq,
            broken,
        };
        let bytes = (src.object)(&src.manifest_id(k), Kind::Manifest.max_body() + HEADER_LEN)
            .map_err(|e| bad(Broken::ManifestObject(Box::new(e))))?;
        Ok(Manifest::decode(&bytes)
            .map_err(|e| bad(Broken::ManifestDecode(e)))?
            .components)
    }

    /// Creates one new, empty output file per component, at its final length.
    fn create_outputs(
        &self,
        outputs: &Outputs<'_>,
        comps: &[ComponentRoot],
    ) -> Result<OutputFiles, StoreError> {
        comps
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let (f, path) = match outputs {
                    Outputs::Dir { dir, name } => {
                        let n = name(i, c);
                        dir.remove_file(Path::new(&n))?;
                        (dir.create_new(&n)?, dir.display(Path::new(&n)))
                    }
                    Outputs::Memory => (
                        memory_file(&c.name)?,
                        PathBuf::from(format!("(memory) {}", c.name)),
                    ),
                };
                f.set_len(c.len).map_err(|error| StoreError::Io {
                    path: path.clone(),
                    error,
                })?;
                Ok((f, path))
            })
            .collect()
    }

    /// Every component's tree at every seq from the signed page digests; each root must match
    /// its manifest. Returns the trees at the last seq.
    fn digest_trees(
        &self,
        rb: &Rebuild<'_>,
        manifests: &[Manifest],
    ) -> Result<Vec<ImageTree>, StoreError> {
        let comps = &manifests[0].components;
        let mut trees: Vec<ImageTree> = Vec::with_capacity(comps.len());
        let mut small: Vec<Vec<u8>> = comps.iter().map(|_| Vec::new()).collect();
        let mut dec = Decoder::new()?;
        for (k, m) in manifests.iter().enumerate() {
            let seq = m.meta.seq;
            for (i, c) in comps.iter().enumerate() {
                let listed: Vec<(PageIndex, Digest)> = m
                    .entries
                    .iter()
                    .filter(|e| usize::from(e.component) == i)
                    .map(|e| (e.page, e.digest))
                    .collect();
                if c.len <= PAGE_SIZE as u64 {
                    // A root of at most one page is a plain hash of its bytes: rebuild them.
                    if k == 0 {
                        small[i] = vec![0u8; idx(c.len)];
                    }
                    rb.apply_region(seq, None, i, 0, &mut small[i], &mut dec)?;
                }
                let verr = |e| StoreError::Verification {
                    seq,
                    broken: Broken::Tree(e),
                };
                if k == 0 {
                    let tree = match self.cached_base_tree(i, c) {
                        Some(t) => t,
                        None => ImageTree::from_sparse_page_digests(
                            &self.params,
                            c.len,
                            &listed,
                            &small[i],
                        )
                        .map_err(verr)?,
                    };
                    trees.push(tree);
                } else if !listed.is_empty() {
                    // A carried page claims to be unchanged: its digest must say so.
                    let moved = m.entries.iter().find(|e| {
                        usize::from(e.component) == i
                            && e.change == PageChange::Carried
                            && trees[i].page_digest(e.page) != Some(e.digest)
                    });
                    if let Some(e) = moved {
                        return Err(StoreError::Verification {
                            seq,
                            broken: Broken::Carried {
                                component: c.name.clone(),
                                page: e.page,
                            },
                        });
                    }
                    trees[i]
                        .set_page_digests(&listed, &small[i])
                        .map_err(verr)?;
                }
                if trees[i].root() != m.components[i].root {
                    return Err(StoreError::Verification {
                        seq,
                        broken: Broken::Root {
                            component: c.name.clone(),
                            found: trees[i].root(),
                            expected: m.components[i].root,
                        },
                    });
                }
            }
        }
        Ok(trees)
    }

    /// Link-level checks; returns the manifests in seq order.
    /// The keys each link (and the rebase) must be signed by, from the keys the caller pins
    /// through the chain's rotations and revocations; none when the caller pins none.
    fn link_signers(&self, src: &Source<'_>, opts: &Plan<'_>) -> Result<Signers, StoreError> {
        let mut out = Signers {
            keys: Vec::new(),
            rebase: None,
            failure: None,
        };
        let Some(pinned) = opts.keys else {
            return Ok(out);
        };
        let mut revocations = self.revocations()?;
        revocations.extend(opts.revocations.iter().cloned());
        let mut walk = KeyWalk::new(pinned, src.rebase.as_ref(), &src.links, &revocations)?;
        for (k, l) in src.links.iter().enumerate() {
            match walk.expect(l) {
                Ok(keys) => out.keys.push(keys),
                Err(b) => {
                    out.failure = Some(b);
                    break;
                }
            }
            if k == 0 && src.rebase.is_some() {
                match walk.current() {
                    Ok(keys) => out.rebase = Some(keys),
                    Err(b) => {
                        out.failure = Some(b);
                        break;
                    }
                }
            }
        }
        Ok(out)
    }

    fn check_links(&self, src: &Source<'_>, opts: &Plan<'_>) -> Result<Vec<Manifest>, StoreError> {
        let alg = self.params.alg();
        let mut prev = alg.zero_digest();
        let mut prev_time = UnixTime { secs: 0, nanos: 0 };
        let mut out: Vec<Manifest> = Vec::with_capacity(src.links.len());
        let base = src.rebase.as_ref().map_or(SeqNo(0), |r| r.value().seq());
        let mut signers = self.link_signers(src, opts)?;
        // Signatures, manifests and delta digests of all links at once; the checks below
        // still run, and fail, in seq order.
        let heavy: Vec<LinkWork> = src
            .links
            .par_iter()
            .enumerate()
            .map(|(k, signed)| {
                let folded = src.rebase.as_ref().filter(|_| k == 0);
                let signature = match signers.keys.get(k) {
                    Some(keys) => verify_signed(signed, keys)
                        .map_err(Broken::Signature)
                        .and_then(|()| match (folded, &signers.rebase) {
                            (Some(r), Some(keys)) => {
                                verify_signed(r, keys).map_err(Broken::RebaseSignature)
                            }
                            _ => Ok(()),
                        }),
                    None => Ok(()),
                };
                // A rebase's full manifest stands in for its link's pruned delta.
                let manifest =
                    (src.object)(&src.manifest_id(k), Kind::Manifest.max_body() + HEADER_LEN)
                        .map_err(|e| Broken::ManifestObject(Box::new(e)))
                        .and_then(|b| Manifest::decode(&b).map_err(Broken::ManifestDecode))
                        .map(|m| {
                            let d = delta_digest(alg, &m.entries);
                            (m, d)
                        });
                LinkWork {
                    signature,
                    manifest,
                }
            })
            .collect();
        for ((k, signed), work) in src.links.iter().enumerate().zip(heavy) {
            let seq = SeqNo(base.0 + k as u64);
            let bad = |broken| StoreError::Verification { seq, broken };
            let l = signed.value();
            if l.seq != seq {
                return Err(bad(Broken::LinkSeq(l.seq)));
            }
            if k == signers.keys.len()
                && let Some(b) = signers.failure.take()
            {
                return Err(bad(b));
            }
            work.signature.map_err(bad)?;
            let folded = src.rebase.as_ref().filter(|_| k == 0).map(|r| r.value());
            if let Some(r) = folded
                && (r.link != *signed || r.origin.alg() != alg)
            {
                return Err(bad(Broken::Rebase));
            }
            // The folded link's predecessor is gone; its own signature still covers it.
            if folded.is_none() && l.prev != prev {
                return Err(bad(Broken::Prev {
                    found: l.prev,
                    expected: prev,
                }));
            }
            if l.time < prev_time {
                return Err(bad(Broken::Time {
                    found: l.time,
                    prev: prev_time,
                }));
            }
            let (m, delta) = work.manifest.map_err(bad)?;
            if m.meta.seq != seq || m.meta.time != l.time {
                return Err(bad(Broken::ManifestMeta));
            }
            if m.meta.vm_id != self.meta.vm_id {
                return Err(bad(Broken::VmId {
                    found: m.meta.vm_id.clone(),
                    expected: self.meta.vm_id.clone(),
                }));
            }
            if m.meta.params != self.params {
                let tree = |p: &vmattest_core::tree::TreeParams| {
                    format!("{} with salt {:?}", p.alg(), hex::encode(p.salt()))
                };
                return Err(bad(Broken::Params {
                    found: tree(&m.meta.params),
                    expected: tree(&self.params),
                }));
            }
            if m.meta.policy_id != self.meta.policy_id {
                return Err(bad(Broken::Policy {
                    found: m.meta.policy_id.clone(),
                    expected: self.meta.policy_id.clone(),
                }));
            }
            if let Some(first) = out.first() {
                let same = first.components.len() == m.components.len()
                    && first
                        .components
                        .iter()
                        .zip(&m.components)
                        .all(|(a, b)| a.name == b.name && a.kind == b.kind && a.len == b.len);
                if !same {
                    return Err(bad(Broken::Components));
                }
            }
            if delta != folded.map_or(l.delta, |r| r.delta) {
                return Err(bad(Broken::Delta));
            }
            if state_root(&m.meta, &m.components) != l.state_root {
                return Err(bad(Broken::StateRoot));
            }
            prev = link_digest(signed);
            prev_time = l.time;
            out.push(m);
        }
        if let (Some((now, max)), Some(last)) = (opts.max_age, src.links.last()) {
            let age = now.secs.saturating_sub(last.value().time.secs);
            if age > max {
                return Err(StoreError::Verification {
                    seq: last.value().seq,
                    broken: Broken::TooOld { age, max },
                });
            }
        }
        Ok(out)
    }
}

/// What [`Store::check_links`] computes for each link in parallel.
/// What [`Store::link_signers`] found: the keys of each link up to the first one the key
/// rules refuse (and why), and the rebase's.
struct Signers {
    keys: Vec<Vec<PublicKey>>,
    rebase: Option<Vec<PublicKey>>,
    failure: Option<Broken>,
}

struct LinkWork {
    signature: Result<(), Broken>,
    manifest: Result<(Manifest, Digest), Broken>,
}

/// Rebuilds every region of every component at the last seq and writes it; returns each
/// region's page digests for the caller to check. The files must read as zeros beforehand
/// (new or truncated): long zero runs are left as holes, not written.
fn rebuild_all(
    rb: &Rebuild<'_>,
    comps: &[ComponentRoot],
    files: &[(File, PathBuf)],
) -> Result<Vec<(usize, u64, Vec<u8>)>, StoreError> {
    let regions: Vec<(usize, u64)> = comps
        .iter()
        .enumerate()
        .flat_map(|(i, c)| {
            (0..page_count(c.len).div_ceil(REGION_PAGES)).map(move |r| (i, r * REGION_PAGES))
        })
        .collect();
    // A pool of one scratch per worker: buffers are faulted in once, then reused.
    let pool = std::sync::Mutex::new(Vec::<Scratch>::new());
    regions
        .par_iter()
        .map(|&(i, first)| {
            let taken = pool
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .pop();
            let mut scratch = match taken {
                Some(s) => s,
                None => Scratch::new()?,
            };
            let (f, path) = &files[i];
            let r = rb.rebuild_region(i, first, comps[i].len, f, path, &mut scratch);
            pool.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(scratch);
            r.map(|leaves| (i, first, leaves))
        })
        .collect()
}

impl Store {
    /// Copies the cached head images into `files` inside the kernel and hashes the copies
    /// (never the cache, which a writer may change meanwhile). One thread copies chunk after
    /// chunk (parallel writes to one file serialise in the kernel anyway) while the pool
    /// hashes the chunks already copied.
    fn copy_head(
        &self,
        comps: &[ComponentRoot],
        files: &[(File, PathBuf)],
    ) -> Result<Vec<(usize, u64, Vec<u8>)>, StoreError> {
        let maps = comps
            .iter()
            .zip(files)
            .map(|(c, (f, path))| {
                let f = f.try_clone().map_err(|error| StoreError::Io {
                    path: path.clone(),
                    error,
                })?;
                MappedImage::from_file(f, path).map_err(|error| StoreError::Image {
                    what: format!("component {}", c.name),
                    error,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let chunks: Vec<(usize, u64)> = comps
            .iter()
            .enumerate()
            .flat_map(|(i, c)| {
                (0..page_count(c.len).div_ceil(HASH_PAGES)).map(move |r| (i, r * HASH_PAGES))
            })
            .collect();
        let (tx, rx) = std::sync::mpsc::channel::<(usize, u64)>();
        let copier = || -> Result<(), StoreError> {
            let mut src: Option<(usize, File)> = None;
            for &(i, first) in &chunks {
                if src.as_ref().is_none_or(|(j, _)| *j != i) {
                    let p = self.cache_image(i);
                    src = Some((i, self.dir.open_file(&p, Access::Read)?));
                }
                let Some((_, from)) = &src else { continue };
                let (out, path) = &files[i];
                let start = first * PAGE_SIZE as u64;
                let len = (comps[i].len - start).min(HASH_PAGES * PAGE_SIZE as u64);
                copy_range(from, out, start, len).map_err(|error| StoreError::Io {
                    path: path.clone(),
                    error,
                })?;
                if tx.send((i, first)).is_err() {
                    break;
                }
            }
            drop(tx);
            Ok(())
        };
        let dlen = self.params.alg().digest_len();
        let hash = |(i, first): (usize, u64)| {
            let bytes = maps[i].bytes();
            let start = idx(first) * PAGE_SIZE;
            let end = (start + idx(HASH_PAGES) * PAGE_SIZE).min(bytes.len());
            let mut leaves = vec![0u8; idx(page_count((end - start) as u64)) * dlen];
            self.params
                .hash_pages(PageIndex(first), &bytes[start..end], &mut leaves);
            self.progress().advance((end - start) as u64);
            (i, first, leaves)
        };
        // The copier blocks in the kernel: on its own thread it leaves both pool workers to
        // hash and to check the links, instead of holding one of them.
        std::thread::scope(|scope| {
            let copying = scope.spawn(copier);
            let hashed = rx.into_iter().par_bridge().map(hash).collect::<Vec<_>>();
            copying
                .join()
                .map_err(|_| StoreError::Input("the copying thread panicked".into()))??;
            Ok(hashed)
        })
    }
}

/// Pages per copy-and-hash chunk of a head restore.
const HASH_PAGES: u64 = 8192;

/// `len` bytes at `off` from one file to the same offset of another, inside the kernel.
fn copy_range(from: &File, to: &File, off: u64, len: u64) -> std::io::Result<()> {
    let (mut a, mut b, mut left) = (off, off, idx(len));
    while left > 0 {
        let n = rustix::fs::copy_file_range(from, Some(&mut a), to, Some(&mut b), left)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the head cache is shorter than its component",
            ));
        }
        left -= n;
    }
    Ok(())
}
