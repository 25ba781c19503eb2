//! The chain's signing keys: rotations announced by links, revocations kept beside the chain
//! (`revocations/<id>.rev`), and the walk that says which keys must sign each link.

use std::path::PathBuf;

use vmattest_core::alg::Digest;
use vmattest_core::chain::{
    ChainKey, KeySchedule, Link, SeqNo, SignedLink, SignedRebase, SignedRevocation, link_digest,
};
use vmattest_core::sig::KeyId;
use vmattest_core::wire::{HEADER_LEN, Kind};
use vmattest_sign::record::verify_signed;
use vmattest_sign::{PublicKey, Signer};

use crate::replay::PinnedKeys;
use crate::take::TakeOptions;
use crate::{Broken, Head, Store, StoreError, StoreWriter};

/// Most revocations a store keeps or a verifier takes.
pub const MAX_REVOCATIONS: usize = 1024;
const DIR: &str = "revocations";

/// Where a store keeps a revocation of these bytes: named by their BLAKE3, so a copy is kept
/// once.
fn revocation_path(bytes: &[u8]) -> PathBuf {
    PathBuf::from(format!(
        "{DIR}/{}.rev",
        vmattest_core::chain::ObjectId::of(bytes).to_hex()
    ))
}

fn encoded(rev: &SignedRevocation) -> Result<Vec<u8>, StoreError> {
    rev.encode().map_err(|e| StoreError::Input(e.to_string()))
}

/// A revocation and where it came from (a store file or a file the caller gave).
pub type NamedRevocation = (String, SignedRevocation);

fn public_keys(keys: &[ChainKey]) -> Result<Vec<PublicKey>, Broken> {
    keys.iter()
        .map(|k| {
            PublicKey::from_raw(k.alg, &k.raw).map_err(|e| Broken::AnnouncedKey {
                key: k.id(),
                detail: e.to_string(),
            })
        })
        .collect()
}

/// A chain's keys as a verifier walks it: pinned keys, the baseline's revokers, revocations
/// whose signatures passed, and a rebase's key links already applied.
pub(crate) struct KeyWalk {
    schedule: KeySchedule,
}

impl KeyWalk {
    /// `links` run from the chain's first seq; after a prune `links[0]` is `rebase`'s link.
    pub(crate) fn new(
        pinned: &[PublicKey],
        rebase: Option<&SignedRebase>,
        links: &[SignedLink],
        revocations: &[NamedRevocation],
    ) -> Result<KeyWalk, StoreError> {
        let folded: &[SignedLink] = rebase.map_or(&[], |r| &r.value().key_links);
        let baseline = folded.iter().chain(links).next().map(|l| l.value());
        let origin: Digest = match (rebase, links.first()) {
            (Some(r), _) => r.value().origin,
            (None, Some(first)) => link_digest(first),
            (None, None) => {
                return Err(StoreError::Input("the store has no snapshots yet".into()));
            }
        };
        let revokers = baseline
            .filter(|l| l.seq == SeqNo(0))
            .map(|l| l.announce.revokers.clone())
            .unwrap_or_default();
        let mut known: Vec<ChainKey> = pinned.iter().map(PublicKey::to_chain_key).collect();
        let mut schedule = KeySchedule::new(known.clone(), revokers);
        let announced = folded.iter().chain(links).map(|l| &l.value().announce);
        for k in announced
            .flat_map(|a| &a.signers)
            .chain(revocations.iter().flat_map(|(_, r)| &r.value().successors))
        {
            if !known.iter().any(|x| x.id() == k.id()) {
                known.push(k.clone());
            }
        }
        for (file, rev) in revocations {
            let r = rev.value();
            // A key these links never name signs none of them: its own revocation is moot.
            if r.key_ids == [r.key] && !known.iter().any(|k| k.id() == r.key) {
                continue;
            }
            let bad = |detail: String| StoreError::Verification {
                seq: r.from,
                broken: Broken::Revocation {
                    file: file.clone(),
                    detail,
                },
            };
            let signers = schedule
                .revocation_signers(r, &origin, &known)
                .map_err(|e| bad(e.to_string()))?;
            let keys = public_keys(&signers).map_err(|e| bad(e.to_string()))?;
            verify_signed(rev, &keys).map_err(|e| bad(e.to_string()))?;
            schedule.add_revocation(r.clone());
        }
        let mut walk = KeyWalk { schedule };
        if let Some(r) = rebase {
            for l in folded {
                walk.expect(l)
                    .and_then(|keys| verify_signed(l, &keys).map_err(Broken::Signature))
                    .map_err(|cause| StoreError::Verification {
                        seq: r.value().seq(),
                        broken: Broken::KeyLink {
                            seq: l.value().seq,
                            cause: Box::new(cause),
                        },
                    })?;
            }
        }
        Ok(walk)
    }

    /// The keys that must all sign `link`; the walk moves past it.
    pub(crate) fn expect(&mut self, link: &SignedLink) -> Result<Vec<PublicKey>, Broken> {
        let l = link.value();
        let keys = self
            .schedule
            .expect(l.seq, &l.announce, &l.key_ids)
            .map_err(Broken::Keys)?;
        public_keys(&keys)
    }

    /// The keys in force for the next link: a rebase's signers.
    pub(crate) fn current(&self) -> Result<Vec<PublicKey>, Broken> {
        public_keys(self.schedule.current())
    }
}

/// The key ids in force after `head` with the revocations from `seq` or before applied (the
/// next link's seq for a take, `head`'s own for a rebase), by the id rules alone: the
/// signatures of the store's revocations are checked by verifiers, not here. A forged
/// revocation can make a take refuse, never make it sign with another key than its caller's.
pub(crate) fn next_signers(
    head: &Link,
    revocations: &[NamedRevocation],
    rotate_to: &[KeyId],
    seq: SeqNo,
) -> Result<Vec<KeyId>, StoreError> {
    let revoked = |id: &KeyId, at: SeqNo| {
        revocations
            .iter()
            .map(|(_, r)| r.value())
            .filter(|r| r.key == *id && r.from <= at)
            .min_by_key(|r| r.from)
    };
    if let Some((id, r)) = head
        .key_ids
        .iter()
        .find_map(|id| revoked(id, head.seq).map(|r| (id, r)))
    {
        return Err(StoreError::Input(format!(
            "seq {}: signed by key {id}, revoked from seq {}; the chain cannot continue past seq {}",
            head.seq,
            r.from,
            r.from.0.saturating_sub(1)
        )));
    }
    let mut current: Vec<KeyId> = if head.announce.signers.is_empty() {
        head.key_ids.clone()
    } else {
        head.announce.signers.iter().map(ChainKey::id).collect()
    };
    for (_, r) in revocations {
        let r = r.value();
        if r.from <= seq
            && let Some(i) = current.iter().position(|k| *k == r.key)
        {
            current.remove(i);
            for s in &r.successors {
                if !current.contains(&s.id()) {
                    current.push(s.id());
                }
            }
        }
    }
    if current.is_empty() {
        return Err(StoreError::Input(format!(
            "seq {seq}: every signing key of the chain is revoked; start a new chain"
        )));
    }
    for id in rotate_to {
        if let Some(r) = revoked(id, seq) {
            return Err(StoreError::Input(format!(
                "key {id} is revoked from seq {}; rotate to another key",
                r.from
            )));
        }
        if !current.contains(id) {
            current.push(*id);
        }
    }
    Ok(current)
}

impl Store {
    /// The revocations kept beside the chain, by file name.
    pub fn revocations(&self) -> Result<Vec<NamedRevocation>, StoreError> {
        self.revocation_names()?
            .into_iter()
            .map(|name| {
                let path = PathBuf::from(DIR).join(&name);
                let bytes = self
                    .dir
                    .read_capped(&path, Kind::Signed.max_body() + HEADER_LEN)?;
                let rev = SignedRevocation::decode(&bytes).map_err(|e| StoreError::Corrupt {
                    file: path.clone(),
                    detail: e.to_string(),
                })?;
                Ok((path.display().to_string(), rev))
            })
            .collect()
    }

    /// The keys that sign the next link, by the id rules of a take; `None` before the
    /// baseline.
    pub fn keys_in_force(&self) -> Result<Option<Vec<KeyId>>, StoreError> {
        let Some(head) = self.head()? else {
            return Ok(None);
        };
        let link = self.read_link(head.seq)?;
        let next = SeqNo(head.seq.0.saturating_add(1));
        next_signers(link.value(), &self.revocations()?, &[], next).map(Some)
    }

    /// The chain's identity, which revocations name: its seq-0 link digest.
    pub fn origin(&self) -> Result<Digest, StoreError> {
        let head = self
            .head()?
            .ok_or_else(|| StoreError::Input("the store has no snapshots yet".into()))?;
        Ok(match self.rebase(&head)? {
            Some(r) => r.value().origin,
            None => link_digest(&self.read_link(SeqNo(0))?),
        })
    }

    /// The chain's rebase, if pruned, and its links from the first seq (the rebase's link after
    /// a prune) up to `upto`.
    pub(crate) fn links_upto(
        &self,
        head: &Head,
        upto: SeqNo,
    ) -> Result<(Option<SignedRebase>, Vec<SignedLink>), StoreError> {
        let rebase = self.rebase(head)?;
        let n = usize::try_from(upto.0.saturating_sub(head.base.0)).unwrap_or(0);
        let mut links = Vec::with_capacity(n.saturating_add(1));
        if let Some(r) = &rebase {
            links.push(r.value().link.clone());
        }
        for s in head.base.0 + u64::from(rebase.is_some())..=upto.0 {
            links.push(self.read_link(SeqNo(s))?);
        }
        Ok((rebase, links))
    }

    /// The revocation files' names, sorted and counted against the cap.
    fn revocation_names(&self) -> Result<Vec<String>, StoreError> {
        let rel = PathBuf::from(DIR);
        if self.dir.kind(&rel)?.is_none() {
            return Ok(Vec::new());
        }
        let mut names: Vec<String> = self
            .dir
            .open_dir(&rel)?
            .entries()?
            .into_iter()
            .map(|(name, _)| name)
            .filter(|n| n.ends_with(".rev"))
            .collect();
        if names.len() > MAX_REVOCATIONS {
            return Err(StoreError::Corrupt {
                file: rel,
                detail: format!(
                    "{} revocations, expected at most {MAX_REVOCATIONS}",
                    names.len()
                ),
            });
        }
        names.sort();
        Ok(names)
    }
}

impl StoreWriter {
    /// Everyone who signs the link after `head`: the keys in force, which `opts.signers`
    /// must be exactly, and the keys a rotation announces.
    pub(crate) fn link_signers<'s>(
        &self,
        head: Option<&SignedLink>,
        opts: &TakeOptions<'s>,
    ) -> Result<Vec<&'s dyn Signer>, StoreError> {
        if head.is_some() && !opts.revokers.is_empty() {
            return Err(StoreError::Input(
                "revokers are announced by the baseline (seq 0) only".into(),
            ));
        }
        if opts.revokers.len() > 8 || opts.rotate_to.len() > 8 {
            return Err(StoreError::Input(
                "expected at most 8 revokers and 8 keys to rotate to".into(),
            ));
        }
        let given: Vec<KeyId> = opts.signers.iter().map(|s| s.key_id()).collect();
        let rotate: Vec<KeyId> = opts.rotate_to.iter().map(|s| s.key_id()).collect();
        let mut all: Vec<&'s dyn Signer> = Vec::new();
        for s in opts.signers.iter().chain(opts.rotate_to) {
            if !all.iter().any(|a| a.key_id() == s.key_id()) {
                all.push(*s);
            }
        }
        if all.len() > 8 {
            return Err(StoreError::Input("expected 1 to 8 signing keys".into()));
        }
        let Some(head) = head else {
            return Ok(all);
        };
        let next = SeqNo(head.value().seq.0.saturating_add(1));
        let mut want = next_signers(head.value(), &self.revocations()?, &rotate, next)?;
        let mut have: Vec<KeyId> = all.iter().map(|s| s.key_id()).collect();
        want.sort();
        have.sort();
        if want != have {
            let in_force: Vec<String> = want
                .iter()
                .filter(|k| !rotate.contains(k))
                .map(KeyId::to_hex)
                .collect();
            let given: Vec<String> = given.iter().map(KeyId::to_hex).collect();
            return Err(StoreError::Input(format!(
                "signing keys {}: expected the keys in force at seq {}: {}; a new key joins by rotation (--rotate-key)",
                given.join(", "),
                head.value().seq.0 + 1,
                in_force.join(", ")
            )));
        }
        Ok(all)
    }

    /// Keeps `rev` beside the chain once its origin and signatures check against the chain
    /// whose first keys are `pinned`. Returns its file, relative to the store.
    pub fn add_revocation(
        &self,
        rev: &SignedRevocation,
        pinned: &PinnedKeys,
    ) -> Result<String, StoreError> {
        let head = self
            .head()?
            .ok_or_else(|| StoreError::Input("the store has no snapshots yet".into()))?;
        let (rebase, links) = self.links_upto(&head, head.seq)?;
        let mut all = self.revocations()?;
        if all.len() >= MAX_REVOCATIONS {
            return Err(StoreError::Input(format!(
                "the store keeps {MAX_REVOCATIONS} revocations already"
            )));
        }
        let name = revocation_path(&encoded(rev)?).display().to_string();
        let r = rev.value();
        let named = |k: &ChainKey| k.id() == r.key;
        let folded: &[SignedLink] = rebase.as_ref().map_or(&[], |b| &b.value().key_links);
        if !(pinned.keys().iter().any(|k| k.key_id() == r.key)
            || folded
                .iter()
                .chain(&links)
                .any(|l| l.value().announce.signers.iter().any(named))
            || all
                .iter()
                .any(|(_, o)| o.value().successors.iter().any(named)))
        {
            return Err(StoreError::Input(format!(
                "key {}: not a signing key of this chain",
                r.key
            )));
        }
        all.push((name.clone(), rev.clone()));
        KeyWalk::new(pinned.keys(), rebase.as_ref(), &links, &all).map_err(|e| {
            StoreError::Input(format!("the revocation does not fit this chain: {e}"))
        })?;
        self.keep_revocations(&all[all.len() - 1..])?;
        Ok(name)
    }

    /// Writes `revs` (checked by the caller) beside the chain; ones already kept stay.
    pub(crate) fn keep_revocations(&self, revs: &[NamedRevocation]) -> Result<(), StoreError> {
        if revs.is_empty() {
            return Ok(());
        }
        let mut kept = self.revocation_names()?.len();
        self.dir.create_dir_all(&PathBuf::from(DIR))?;
        for (_, rev) in revs {
            let bytes = encoded(rev)?;
            let rel = revocation_path(&bytes);
            if self.dir.file_exists(&rel)? {
                continue;
            }
            if kept >= MAX_REVOCATIONS {
                return Err(StoreError::Input(format!(
                    "the store keeps {MAX_REVOCATIONS} revocations already"
                )));
            }
            self.dir.write_file(&rel, &bytes, true)?;
            kept += 1;
        }
        Ok(())
    }
}
