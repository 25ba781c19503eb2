//! Baselines and snapshot comparisons against real stores of plain files (no QEMU needed).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use vmattest_agent::baseline::{DEFAULT_COMPONENT, baseline_from_store};
use vmattest_agent::measure::Paused;
use vmattest_agent::report::recompute;
use vmattest_core::attest::Policy;
use vmattest_core::chain::ComponentKind;
use vmattest_core::record::UnixTime;
use vmattest_core::sig::SigAlg;
use vmattest_qemu::VmSpec;
use vmattest_sign::{SecretKey, Signer};
use vmattest_store::{ComponentInput, PinnedKeys, Store, StoreMeta, TakeOptions};
use vmattest_testkit::images::error_chain as chain;

const PAGE: usize = 4096;

const POLICY: &str = r#"
name = "t"
hash = "sha256"

[[region]]
name = "low"
start = 0x1000
len = 0x2000
sample = 1

[[region]]
name = "high"
start = 0x10000
len = 0x3000
kernel_code = true
"#;

fn ram(seed: u8) -> Vec<u8> {
    (0..32 * PAGE)
        .map(|i| u8::try_from((i / PAGE + i * 3 + usize::from(seed)) % 251).unwrap())
        .collect()
}

struct Fixture {
    dir: tempfile::TempDir,
    key: SecretKey,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let meta = StoreMeta {
            format: vmattest_store::STORE_FORMAT,
            vm_id: "web1".into(),
            alg: "blake3".into(),
            salt: String::new(),
            policy_id: "default".into(),
            encrypted: false,
            head_cache: true,
            anchor_every: 0,
        };
        Store::init(&dir.path().join("store"), meta).unwrap();
        Fixture {
            dir,
            key: SecretKey::generate(SigAlg::Ed25519).unwrap(),
        }
    }

    fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// Takes the next snapshot of `files` (name, kind, path).
    fn take(&self, files: &[(&str, ComponentKind, &Path)]) {
        let store = Store::open_writer(&self.store()).unwrap();
        let inputs: Vec<ComponentInput> = files
            .iter()
            .map(|(name, kind, path)| ComponentInput {
                name: (*name).into(),
                kind: *kind,
                path: path.to_path_buf(),
                dirty: None,
            })
            .collect();
        let signers: [&dyn Signer; 1] = [&self.key];
        let opts = TakeOptions {
            signers: &signers,
            time: UnixTime {
                secs: 1_700_000_000,
                nanos: 0,
            },
            secret: None,
            anchor: false,
            rotate_to: &[],
            revokers: &[],
        };
        store.take(&inputs, &opts).unwrap();
    }
}

#[test]
fn a_baseline_is_the_page_digests_of_the_snapshot_memory() {
    let f = Fixture::new();
    let ram_path = f.dir.path().join("ram.img");
    let first = ram(1);
    std::fs::write(&ram_path, &first).unwrap();
    f.take(&[(DEFAULT_COMPONENT, ComponentKind::Memory, &ram_path)]);
    std::fs::write(&ram_path, ram(2)).unwrap();
    f.take(&[(DEFAULT_COMPONENT, ComponentKind::Memory, &ram_path)]);

    let policy = Policy::parse(POLICY, None).unwrap();
    let keys = PinnedKeys::new(vec![f.key.public_key()]).unwrap();
    let golden =
        baseline_from_store(&f.store(), 0, &keys, None, &policy, DEFAULT_COMPONENT).unwrap();
    let b = &golden.request;
    assert_eq!(b.policy_id, policy.id().to_hex());
    let expect = |bytes: &[u8], start: usize, pages: usize| -> Vec<String> {
        (0..pages)
            .map(|p| {
                hex::encode(Sha256::digest(
                    &bytes[start + p * PAGE..start + (p + 1) * PAGE],
                ))
            })
            .collect()
    };
    assert_eq!(b.regions.len(), 2);
    assert_eq!(b.regions[0].name, "low");
    assert_eq!(b.regions[0].pages, expect(&first, 0x1000, 2));
    assert_eq!(b.regions[1].name, "high");
    assert_eq!(b.regions[1].pages, expect(&first, 0x10000, 3));
    // The bytes the server keeps to name differences by offset.
    let kept: Vec<(&str, Vec<u8>)> = golden
        .bytes
        .iter()
        .map(|(n, z)| (n.as_str(), zstd::decode_all(&z[..]).unwrap()))
        .collect();
    assert_eq!(kept[0], ("low", first[0x1000..0x3000].to_vec()));
    assert_eq!(kept[1], ("high", first[0x10000..0x13000].to_vec()));
    let store = Store::open(&f.store()).unwrap();
    assert_eq!(b.provenance.seq, 0);
    assert_eq!(b.provenance.store_vm_id, "web1");
    assert_eq!(b.provenance.component, "ram");
    assert_eq!(
        b.provenance.link_digest,
        store
            .link_digest_at(vmattest_core::chain::SeqNo(0))
            .unwrap()
            .to_hex()
    );
    assert_eq!(b.provenance.signer_key_ids, vec![f.key.key_id().to_hex()]);
    assert_eq!(
        b.provenance.snapshot_time.to_string(),
        "2023-11-14T22:13:20Z"
    );

    // Seq 1 holds the second image.
    let b1 = baseline_from_store(&f.store(), 1, &keys, None, &policy, "ram")
        .unwrap()
        .request;
    assert_eq!(b1.regions[1].pages, expect(&ram(2), 0x10000, 3));
    assert_ne!(b1.provenance.state_root, b.provenance.state_root);
    // The scratch copy is gone.
    let tmp: Vec<_> = std::fs::read_dir(f.store().join("tmp")).unwrap().collect();
    assert!(tmp.is_empty(), "{tmp:?}");
}

#[test]
fn a_baseline_needs_the_pinned_key_the_component_and_a_large_enough_image() {
    let f = Fixture::new();
    let ram_path = f.dir.path().join("ram.img");
    std::fs::write(&ram_path, vec![1u8; 8 * PAGE]).unwrap();
    f.take(&[("ram", ComponentKind::Memory, &ram_path)]);
    let policy = Policy::parse(POLICY, None).unwrap();
    let keys = PinnedKeys::new(vec![f.key.public_key()]).unwrap();
    let e = chain(&baseline_from_store(&f.store(), 0, &keys, None, &policy, "ram").unwrap_err());
    assert!(e.contains("region high") && e.contains("32768"), "{e}");
    let e = baseline_from_store(&f.store(), 0, &keys, None, &policy, "memory")
        .unwrap_err()
        .to_string();
    assert!(e.contains("memory") && e.contains("ram"), "{e}");
    let other = PinnedKeys::new(vec![
        SecretKey::generate(SigAlg::Ed25519).unwrap().public_key(),
    ])
    .unwrap();
    assert!(baseline_from_store(&f.store(), 0, &other, None, &policy, "ram").is_err());
    assert!(baseline_from_store(&f.store(), 5, &keys, None, &policy, "ram").is_err());
}

#[test]
fn recomputed_roots_match_the_snapshot_until_the_vm_changes() {
    let f = Fixture::new();
    let vm_dir = f.dir.path().join("vm");
    std::fs::create_dir_all(vm_dir.join("run")).unwrap();
    let spec_text = "name = \"web1\"\nmemory_mib = 16\nrun_dir = \"run\"\n[boot]\nkernel = \"k\"\n[[disk]]\nname = \"disk0\"\npath = \"disk0.raw\"\n";
    let spec = VmSpec::parse(spec_text, &vm_dir.join("web1.toml"), &vm_dir).unwrap();
    std::fs::write(spec.ram_path(), ram(3)).unwrap();
    let disk = vm_dir.join("disk0.raw");
    std::fs::write(&disk, vec![9u8; 5 * PAGE + 100]).unwrap();
    let config = f.dir.path().join("config");
    std::fs::write(&config, spec.config_bytes()).unwrap();
    let dev = f.dir.path().join("dev");
    std::fs::write(&dev, b"device state").unwrap();
    let ram_path = spec.ram_path();
    f.take(&[
        ("ram", ComponentKind::Memory, &ram_path),
        ("disk0", ComponentKind::Disk, &disk),
        ("device-state", ComponentKind::DeviceState, &dev),
        ("config", ComponentKind::Config, &config),
    ]);
    let store = Store::open(&f.store()).unwrap();
    let keys = PinnedKeys::new(vec![f.key.public_key()]).unwrap();
    let v = store
        .verify(&vmattest_store::ReplayOptions::new(&keys))
        .unwrap();
    // No QEMU runs this spec: its files hold still.
    let paused = Paused::if_stopped(&spec).unwrap();
    let checks = recompute(&paused, store.params(), &v.components).unwrap();
    let names: Vec<&str> = checks.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["ram", "disk0", "config"]);
    assert!(checks.iter().all(|c| c.matches()), "{checks:?}");

    let mut changed = ram(3);
    changed[0x5000] ^= 1;
    std::fs::write(spec.ram_path(), changed).unwrap();
    let checks = recompute(&paused, store.params(), &v.components).unwrap();
    let bad: Vec<&str> = checks
        .iter()
        .filter(|c| !c.matches())
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(bad, ["ram"]);
}
