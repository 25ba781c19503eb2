#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use vmattest_core::chain::ComponentKind;
use vmattest_core::record::UnixTime;
use vmattest_core::sig::SigAlg;
use vmattest_sign::{SecretKey, Signer};
use vmattest_store::{
    ComponentInput, Frozen, Hold, PinnedKeys, ReplayOptions, Store, StoreError, StoreMeta,
    StoreSecret, StoreWriter, TakeOptions, TakeSummary,
};

pub const PAGE: usize = 4096;

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub store: PathBuf,
    pub key: SecretKey,
    pub secret: Option<StoreSecret>,
    pub time: u64,
}

impl Fixture {
    pub fn new(alg: &str, encrypted: bool) -> Fixture {
        Fixture::with_head_cache(alg, encrypted, true)
    }

    /// [`Fixture::new`] for a store that keeps the head's images or, without `head_cache`,
    /// only its digests.
    pub fn with_head_cache(alg: &str, encrypted: bool, head_cache: bool) -> Fixture {
        Fixture::with_layout(alg, encrypted, head_cache, 0)
    }

    /// [`Fixture::with_head_cache`] for a store that makes every `anchor_every`th link an anchor.
    pub fn with_layout(alg: &str, encrypted: bool, head_cache: bool, anchor_every: u32) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        let meta = StoreMeta {
            format: vmattest_store::STORE_FORMAT,
            vm_id: "vm-test".into(),
            alg: alg.into(),
            salt: if alg == "blake3" {
                String::new()
            } else {
                "a1b2".into()
            },
            policy_id: "default".into(),
            encrypted,
            head_cache,
            anchor_every,
        };
        Store::init(&store, meta).unwrap();
        let secret = encrypted.then(|| StoreSecret::generate(&dir.path().join("secret")).unwrap());
        Fixture {
            dir,
            store,
            key: SecretKey::generate(SigAlg::Ed25519).unwrap(),
            secret,
            time: 1_800_000_000,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn public(&self) -> PinnedKeys {
        PinnedKeys::new(vec![self.key.public_key()]).unwrap()
    }

    pub fn take(&mut self, comps: &[(&str, ComponentKind, &Path)]) -> TakeSummary {
        self.try_take(comps).unwrap()
    }

    pub fn try_take(
        &mut self,
        comps: &[(&str, ComponentKind, &Path)],
    ) -> Result<TakeSummary, StoreError> {
        self.take_as(comps, false)
    }

    /// A take that is an anchor when `anchor`, whatever the store's interval.
    pub fn take_as(
        &mut self,
        comps: &[(&str, ComponentKind, &Path)],
        anchor: bool,
    ) -> Result<TakeSummary, StoreError> {
        let inputs = inputs(comps);
        let store = Store::open_writer(&self.store)?;
        let frozen = store.freeze(&inputs, self.secret.as_ref(), Hold::UntilCommit)?;
        self.commit(&store, frozen, anchor)
    }

    /// The first half of a paused guest's capture of the memory image `mem`: its changed pages
    /// are copied out, so the test may write the image before [`Fixture::commit`].
    pub fn freeze_paused(&self, mem: &Path) -> (StoreWriter, Frozen) {
        let store = Store::open_writer(&self.store).unwrap();
        let inputs = [ComponentInput {
            name: "mem".into(),
            kind: ComponentKind::Memory,
            path: mem.to_path_buf(),
            dirty: None,
        }];
        let frozen = store
            .freeze(&inputs, self.secret.as_ref(), Hold::WhilePaused(&Still))
            .unwrap();
        (store, frozen)
    }

    /// The second half: stores, signs and commits, an anchor when `anchor`.
    pub fn commit(
        &mut self,
        store: &StoreWriter,
        frozen: Frozen,
        anchor: bool,
    ) -> Result<TakeSummary, StoreError> {
        self.time += 5;
        let signers: [&dyn Signer; 1] = [&self.key];
        let keys = Keys::signers(&signers);
        commit_at(
            store,
            frozen,
            anchor,
            &keys,
            self.time,
            self.secret.as_ref(),
        )
    }

    /// A take of `comps` signed as `keys` says.
    pub fn take_signed(
        &mut self,
        comps: &[(&str, ComponentKind, &Path)],
        keys: &Keys<'_>,
    ) -> Result<TakeSummary, StoreError> {
        let inputs = inputs(comps);
        let store = Store::open_writer(&self.store)?;
        let frozen = store.freeze(&inputs, self.secret.as_ref(), Hold::UntilCommit)?;
        self.time += 5;
        commit_at(&store, frozen, false, keys, self.time, self.secret.as_ref())
    }

    pub fn opts<'a>(&'a self, keys: &'a PinnedKeys, upto: Option<u64>) -> ReplayOptions<'a> {
        ReplayOptions {
            upto: upto.map(vmattest_core::chain::SeqNo),
            keys,
            secret: self.secret.as_ref(),
            max_age: None,
            revocations: &[],
        }
    }
}

fn inputs(comps: &[(&str, ComponentKind, &Path)]) -> Vec<ComponentInput> {
    comps
        .iter()
        .map(|(n, k, p)| ComponentInput {
            name: (*n).into(),
            kind: *k,
            path: p.to_path_buf(),
            dirty: None,
        })
        .collect()
}

fn commit_at(
    store: &StoreWriter,
    frozen: Frozen,
    anchor: bool,
    keys: &Keys<'_>,
    secs: u64,
    secret: Option<&StoreSecret>,
) -> Result<TakeSummary, StoreError> {
    let opts = TakeOptions {
        signers: keys.signers,
        time: UnixTime { secs, nanos: 0 },
        secret,
        anchor,
        rotate_to: keys.rotate_to,
        revokers: keys.revokers,
    };
    store.commit(frozen, &opts)
}

/// Who signs a take: the keys in force, keys rotated to, and a baseline's revokers.
pub struct Keys<'a> {
    pub signers: &'a [&'a dyn Signer],
    pub rotate_to: &'a [&'a dyn Signer],
    pub revokers: &'a [vmattest_sign::PublicKey],
}

impl<'a> Keys<'a> {
    pub fn signers(signers: &'a [&'a dyn Signer]) -> Keys<'a> {
        Keys {
            signers,
            rotate_to: &[],
            revokers: &[],
        }
    }
}

/// A "paused guest" for [`Fixture::freeze_paused`]: the tests write the image only after
/// `freeze` returned.
struct Still;

// SAFETY: each `Still` is a temporary of a `freeze` call in `Fixture::freeze_paused`, and the
// tests write the image file only after that call returns.
#[allow(unsafe_code)]
unsafe impl vmattest_store::Quiescent for Still {}

pub use vmattest_testkit::images::vm_like;

pub fn object_path(root: &Path, id: &vmattest_core::chain::ObjectId) -> PathBuf {
    let hex = id.to_hex();
    root.join("objects").join(&hex[..2]).join(&hex[2..])
}

pub fn link_path(root: &Path, seq: u64) -> PathBuf {
    root.join("links").join(format!("{seq:020}.link"))
}

/// Writes `bytes` as an object of the store at `root`, as a forger with file access would.
pub fn write_object(root: &Path, bytes: &[u8]) -> vmattest_core::chain::ObjectId {
    let id = vmattest_core::chain::ObjectId::of(bytes);
    let p = object_path(root, &id);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, bytes).unwrap();
    id
}

/// Signs `link` with `key` (a pinned key: the forger holds it), writes it as the head's link
/// file and points HEAD at it.
pub fn resign_head(root: &Path, key: &SecretKey, link: vmattest_core::chain::Link) {
    use vmattest_core::record::{SignatureEntry, Signed};
    let seq = link.seq.0;
    let mut forged = Signed::new(link).unwrap();
    let signature = key.sign(&forged.message()).unwrap();
    forged.signatures.push(SignatureEntry {
        alg: key.alg(),
        key_id: key.key_id(),
        signature,
    });
    std::fs::write(link_path(root, seq), forged.encode().unwrap()).unwrap();
    let digest = vmattest_core::chain::link_digest(&forged).to_hex();
    std::fs::write(
        root.join("HEAD"),
        format!("{{\"seq\":{seq},\"link\":\"{digest}\"}}"),
    )
    .unwrap();
}

/// Changes `n` pages: some a few bytes, some rewritten, some zeroed.
pub fn mutate(data: &mut [u8], n: usize, seed: u64) {
    let pages = data.len().div_ceil(PAGE);
    let mut x = seed | 1;
    for i in 0..n {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let p = (x >> 33) as usize % pages;
        let start = p * PAGE;
        let end = (start + PAGE).min(data.len());
        match i % 3 {
            0 => data[start + (x as usize % (end - start))] ^= 0x5a,
            1 => data[start..end]
                .iter_mut()
                .enumerate()
                .for_each(|(j, b)| *b = (x >> (j % 57)) as u8),
            _ => data[start..end].fill(0),
        }
    }
}

/// Every file under `root` with its bytes, keyed by relative path.
pub fn files(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.insert(
                    p.strip_prefix(root).unwrap().to_path_buf(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}
