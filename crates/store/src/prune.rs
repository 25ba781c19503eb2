//! Retention: folding a chain's oldest seqs under a signed rebase.
//!
//! The state at the new first seq is stored again as a full manifest (a delta from all-zero
//! images, like a baseline), and a rebase, signed by the keys in force after that seq, embeds
//! that seq's original link, whose own signature keeps vouching for its state root and which
//! the next link still names, and the folded links that announced keys. Every kept seq's link, manifest and batches stay as they are, so each kept seq
//! restores to the same bytes. The new chain is verified before HEAD names it (the commit);
//! only then are the folded links and the objects no kept seq needs removed.

use std::collections::HashSet;
use std::path::Path;

use vmattest_core::chain::{
    ComponentRoot, DeltaEntry, MAX_KEY_LINKS, Manifest, ObjectId, Rebase, SeqNo, SignedLink,
    SignedRebase, delta_digest, link_digest, state_root,
};
use vmattest_core::record::UnixTime;
use vmattest_core::sig::KeyId;
use vmattest_image::MappedImage;
use vmattest_sign::Signer;

use crate::crypt::StoreSecret;
use crate::dir::{Access, Dir};
use crate::keys;
use crate::replay::{NameFn, Outputs, PinnedKeys, Plan, Source};
use crate::take::{self, fail_point, sign_with};
use crate::{Head, StoreError, StoreWriter};

/// Which seqs to keep; a seq is folded only when every rule given lets it go.
pub struct PruneOptions<'a> {
    /// Keep the newest `keep` seqs (at least 1).
    pub keep: Option<u64>,
    /// Keep every seq newer than this time, and the state in effect at it.
    pub keep_since: Option<UnixTime>,
    pub keys: &'a PinnedKeys,
    pub secret: Option<&'a StoreSecret>,
    /// Keys to sign the rebase with: of these, the keys in force after the fold's seq sign.
    pub signers: &'a [&'a dyn Signer],
    /// The rebase's time.
    pub time: UnixTime,
}

impl std::fmt::Debug for PruneOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PruneOptions")
            .field("keep", &self.keep)
            .field("keep_since", &self.keep_since)
            .finish_non_exhaustive()
    }
}

/// What a prune did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PruneSummary {
    pub head: u64,
    /// The chain's first seq before and after.
    pub previous_base: u64,
    pub base: u64,
    /// Links folded under the rebase (0 when nothing was old enough).
    pub folded: u64,
    /// Bytes of the new full state's batches.
    pub stored_bytes: u64,
    /// Files no kept seq needs, removed after the commit.
    pub removed_files: u64,
    pub removed_bytes: u64,
}

impl StoreWriter {
    /// Folds every seq below the first one `opts` keeps under a signed rebase.
    pub fn prune(&self, opts: &PruneOptions<'_>) -> Result<PruneSummary, StoreError> {
        if opts.keep.is_none() && opts.keep_since.is_none() {
            return Err(StoreError::Input(
                "nothing to prune by: give a number of seqs to keep or a time".into(),
            ));
        }
        if opts.keep == Some(0) {
            return Err(StoreError::Input(
                "keep 0 seqs: expected at least 1 (the head is always kept)".into(),
            ));
        }
        if opts.signers.is_empty() || opts.signers.len() > 16 {
            return Err(StoreError::Input("expected 1 to 16 signing keys".into()));
        }
        let head = self
            .head()?
            .ok_or_else(|| StoreError::Input("the store has no snapshots yet".into()))?;
        let target = self.prune_target(&head, opts)?;
        let mut summary = PruneSummary {
            head: head.seq.0,
            previous_base: head.base.0,
            base: head.base.0,
            folded: 0,
            stored_bytes: 0,
            removed_files: 0,
            removed_bytes: 0,
        };
        if target <= head.base {
            return Ok(summary);
        }
        let old_rebase = self.rebase(&head)?;
        let origin = self.origin()?;
        let origin_root = self.origin_root(&head)?;

        // The state at the target, verified from the chain's first seq.
        let plan = Plan {
            upto: Some(target),
            keys: Some(opts.keys.keys()),
            secret: opts.secret,
            max_age: None,
            revocations: &[],
        };
        let scratch = self.tmp_dir("prune")?;
        let name = |i: usize, _: &ComponentRoot| format!("{i}.img");
        let outputs = self.outputs_in(scratch.dir(), &name);
        let (at, trees, files) = self.replay_into(&plan, &outputs, false)?;
        let link = self.read_link(target)?;
        if link_digest(&link) != at.link {
            return Err(StoreError::Input(format!(
                "seq {target}: its link changed while the chain was read"
            )));
        }
        let key_links = self.folded_key_links(old_rebase.as_ref(), head.base, target)?;
        let want = keys::next_signers(link.value(), &self.revocations()?, &[], target)?;
        // Of the keys given, those in force after the target sign; every one of them must be.
        let signers: Vec<&dyn Signer> = want
            .iter()
            .filter_map(|id| opts.signers.iter().find(|s| s.key_id() == *id).copied())
            .collect();
        if signers.len() != want.len() {
            let ids: Vec<String> = want.iter().map(KeyId::to_hex).collect();
            return Err(StoreError::Input(format!(
                "a rebase of seq {target} is signed by the keys in force after it: {}",
                ids.join(", ")
            )));
        }
        let old = self.read_manifest(link.value())?;
        let images = files
            .into_iter()
            .map(|(f, path)| {
                MappedImage::from_file(f, &path).map_err(|error| StoreError::Image {
                    what: path.display().to_string(),
                    error,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;

        // The full state as a delta from zeros: every non-zero page, stored literally.
        let mut entries: Vec<DeltaEntry> = Vec::new();
        for (i, (tree, image)) in trees.iter().zip(&images).enumerate() {
            let holes: Vec<std::ops::Range<u64>> =
                image.holes().into_iter().map(|r| r.first..r.end).collect();
            entries.extend(take::delta_entries(i, tree, None, image.bytes(), &holes));
        }
        let key = opts
            .secret
            .map(|s| s.page_key(origin_root.as_bytes(), &self.meta.vm_id));
        let source = take::Source::Mapped(images);
        let (batches, stored) = self.write_batches(
            &mut entries,
            &crate::anchor::Pages::captured(&source),
            &[],
            None,
            key.as_ref(),
        )?;
        summary.stored_bytes = stored;
        let manifest = Manifest {
            meta: old.meta,
            components: old.components,
            entries,
            batches,
            anchor: false,
        };
        if state_root(&manifest.meta, &manifest.components) != link.value().state_root {
            return Err(StoreError::Input(format!(
                "seq {target}: the rebuilt state does not give the link's state root"
            )));
        }
        let manifest_id = self.write_object(&manifest.encode())?;
        self.sync_object_dir(&manifest_id)?;
        let rebase = sign_with(
            Rebase {
                origin,
                origin_root,
                link: link.clone(),
                manifest: manifest_id,
                delta: delta_digest(self.params.alg(), &manifest.entries),
                key_links,
                time: opts.time,
                key_ids: signers.iter().map(|s| s.key_id()).collect(),
            },
            &signers,
        )?;
        let bytes = rebase
            .encode()
            .map_err(|e| StoreError::Input(e.to_string()))?;
        self.dir
            .write_file(&self.rebase_path(target), &bytes, true)?;
        drop(source);
        drop(scratch);

        // The new chain must verify, head included, before HEAD names it.
        let mut links = vec![link];
        for s in target.0 + 1..=head.seq.0 {
            links.push(self.read_link(SeqNo(s))?);
        }
        let object = |id: &ObjectId, max: usize| self.read_object(id, max);
        let check = self.tmp_dir("prune-check")?;
        let outputs = self.outputs_in(check.dir(), &name);
        let plan = Plan {
            upto: Some(head.seq),
            ..plan
        };
        let src = Source {
            links,
            rebase: Some(rebase),
            object: &object,
            from_cache: self.head_in_cache(&head),
        };
        let (verified, _, _) = self.replay_source(&src, &plan, &outputs)?;
        drop(check);
        if verified.link != head.link {
            return Err(StoreError::Input(
                "the head moved while the chain was pruned".into(),
            ));
        }
        fail_point("prune-before-head");
        self.set_head(Head {
            base: target,
            ..head
        })?;
        fail_point("prune-after-head");
        summary.base = target.0;
        summary.folded = target.0 - head.base.0;
        self.keep_base_digests(&trees, None)?;

        let (files, bytes) = self.remove_folded(&Head {
            base: target,
            ..head
        })?;
        summary.removed_files = files;
        summary.removed_bytes = bytes;
        Ok(summary)
    }

    /// The links below `target` that announce keys, from the chain's first seq `base`: the
    /// path a verifier walks from its pinned keys to the keys in force at `target`.
    fn folded_key_links(
        &self,
        old: Option<&SignedRebase>,
        base: SeqNo,
        target: SeqNo,
    ) -> Result<Vec<SignedLink>, StoreError> {
        let mut out: Vec<SignedLink> = match old {
            Some(r) => {
                let mut v = r.value().key_links.clone();
                v.push(r.value().link.clone());
                v
            }
            None => Vec::new(),
        };
        for s in base.0 + u64::from(old.is_some())..target.0 {
            out.push(self.read_link(SeqNo(s))?);
        }
        out.retain(|l| !l.value().announce.is_empty());
        if out.len() > MAX_KEY_LINKS {
            return Err(StoreError::Input(format!(
                "seqs below {target} announce keys {} times; a rebase carries at most {MAX_KEY_LINKS}",
                out.len()
            )));
        }
        Ok(out)
    }

    /// Files in `dir` for a replay's images; an encrypted store's plaintext stays in memory.
    fn outputs_in<'a>(&self, dir: &'a Dir, name: &'a NameFn<'a>) -> Outputs<'a> {
        if self.meta.encrypted {
            Outputs::Memory
        } else {
            Outputs::Dir { dir, name }
        }
    }

    /// The first seq to keep: the smallest one any rule keeps.
    fn prune_target(&self, head: &Head, opts: &PruneOptions<'_>) -> Result<SeqNo, StoreError> {
        let by_count = opts
            .keep
            .map(|n| SeqNo(head.seq.0.saturating_sub(n.saturating_sub(1))));
        let by_time = match opts.keep_since {
            None => None,
            Some(since) => {
                // The newest seq at or before `since` is the state in effect then.
                let mut found = head.base;
                for s in (head.base.0..=head.seq.0).rev() {
                    if self.read_link(SeqNo(s))?.value().time <= since {
                        found = SeqNo(s);
                        break;
                    }
                }
                Some(found)
            }
        };
        Ok(match (by_count, by_time) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => head.base,
        }
        .max(head.base))
    }

    /// Removes the links outside the committed chain and every object none of its manifests
    /// names; returns the files and bytes removed.
    fn remove_folded(&self, head: &Head) -> Result<(u64, u64), StoreError> {
        let mut referenced: HashSet<ObjectId> = HashSet::new();
        let rebase = self.rebase(head)?;
        for s in head.base.0..=head.seq.0 {
            let id = self.manifest_id(rebase.as_ref(), SeqNo(s))?;
            let m = self.manifest_by_id(&id, SeqNo(s))?;
            referenced.insert(id);
            referenced.extend(m.batches.iter().map(|b| b.object));
        }
        let (mut files, mut bytes) = (0u64, 0u64);
        // Scratch in tmp/ may belong to a reader verifying right now: fsck --repair's to clear.
        for rel in self.leftovers(Some(*head), &referenced)? {
            if rel.starts_with(Path::new("tmp")) {
                continue;
            }
            if self.dir.kind(&rel)? == Some(rustix::fs::FileType::RegularFile) {
                let f = self.dir.open_file(&rel, Access::Read)?;
                bytes += f.metadata().map_or(0, |m| m.len());
            }
            self.dir.remove_tree(&rel)?;
            files += 1;
        }
        Ok((files, bytes))
    }
}
