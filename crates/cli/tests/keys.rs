//! Key lifecycle from the command line: `snapshot take --rotate-key` and `--revoker`,
//! `snapshot revoke`, and verifiers that pin only a chain's first key, honouring revocations
//! kept in the store, carried by bundles or handed in with `--revocation`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

mod common;

use std::path::{Path, PathBuf};

use common::*;

struct Keys {
    dir: tempfile::TempDir,
    store: PathBuf,
    mem: PathBuf,
    round: u8,
}

impl Keys {
    fn new(names: &[&str]) -> Keys {
        let dir = tempfile::tempdir().unwrap();
        for n in names {
            let key = dir.path().join(format!("{n}.key"));
            cli(&format!("keygen --alg ed25519 --out {}", s(&key))).ok();
        }
        let store = dir.path().join("store");
        cli(&format!(
            "snapshot init --store {} --vm-id vm-keys",
            s(&store)
        ))
        .ok();
        Keys {
            mem: dir.path().join("mem.img"),
            dir,
            store,
            round: 0,
        }
    }

    fn key(&self, name: &str) -> String {
        s(&self.dir.path().join(format!("{name}.key"))).to_owned()
    }

    fn public(&self, name: &str) -> String {
        format!("{}.pub", self.key(name))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `snapshot take` of a memory image that changes at every take, with `args` added.
    fn take(&mut self, args: &str) -> Run {
        self.round += 1;
        let mut mem = vm_like(16 * 4096, 3);
        mem[usize::from(self.round) * 4096] ^= self.round;
        std::fs::write(&self.mem, &mem).unwrap();
        cli(&format!(
            "--json snapshot take --store {} --memory mem={} {args}",
            s(&self.store),
            s(&self.mem)
        ))
    }

    fn verify(&self, store: &Path, args: &str) -> Run {
        cli(&format!(
            "--json snapshot verify --store {} --pubkey {} {args}",
            s(store),
            self.public("a")
        ))
    }
}

#[test]
fn a_rotated_chain_verifies_with_its_first_key_and_a_revoked_key_signs_no_more() {
    let mut k = Keys::new(&["a", "b", "stranger"]);
    k.take(&format!("--key {}", k.key("a"))).ok();
    let rotated = k.take(&format!("--key {} --rotate-key {}", k.key("a"), k.key("b")));
    assert_eq!(rotated.ok().json()["seq"], 1);
    k.take(&format!("--key {}", k.key("b"))).ok();
    assert_eq!(k.verify(&k.store, "").ok().json()["seq"], 2);

    // The retired key and a key nobody announced are refused, naming the keys in force.
    let log = cli(&format!("--json snapshot log --store {}", s(&k.store))).ok();
    let seq1: serde_json::Value = serde_json::from_str(log.stdout.lines().nth(1).unwrap()).unwrap();
    let b_id = seq1["rotates_to"][0].as_str().unwrap().to_owned();
    k.take(&format!("--key {}", k.key("a")))
        .fails(2, &format!("expected the keys in force at seq 3: {b_id}"));
    k.take(&format!("--key {}", k.key("stranger")))
        .fails(2, "a new key joins by rotation");
    let text = cli(&format!("snapshot log --store {}", s(&k.store))).ok();
    assert!(
        text.stdout.contains(&format!("rotates to {b_id}")),
        "{}",
        text.stdout
    );

    // b's holder revokes it from seq 2: the chain stops verifying there.
    let rev = k.path("b.rev");
    let r = cli(&format!(
        "--json snapshot revoke --store {} --pubkey {} --revoke {} --from 2 --key {} --reason retired --out {}",
        s(&k.store),
        k.public("a"),
        k.public("b"),
        k.key("b"),
        s(&rev)
    ))
    .ok();
    assert_eq!(r.json()["key_id"], b_id.as_str());
    assert!(rev.exists());
    k.verify(&k.store, "").fails(
        1,
        &format!("seq 2: signing keys: key {b_id} is revoked from seq 2"),
    );
    assert_eq!(k.verify(&k.store, "--upto 1").ok().json()["seq"], 1);
    k.take(&format!("--key {}", k.key("b")))
        .fails(2, "revoked from seq 2");
}

#[test]
fn revokers_name_successors_and_revocations_travel_with_bundles_and_files() {
    let mut k = Keys::new(&["a", "b", "admin"]);
    k.take(&format!(
        "--key {} --revoker {}",
        k.key("a"),
        k.public("admin")
    ))
    .ok();
    k.take(&format!("--key {}", k.key("a"))).ok();
    // A copy of the chain made before the revocation.
    let copy = k.path("copy.bundle");
    cli(&format!(
        "snapshot export --store {} --from 0 --out {}",
        s(&k.store),
        s(&copy)
    ))
    .ok();
    let old = k.path("old");
    cli(&format!(
        "snapshot import --store {} --pubkey {} {}",
        s(&old),
        k.public("a"),
        s(&copy)
    ))
    .ok();

    // a is lost: the admin revokes it from seq 1 and names b in its place.
    let rev = k.path("a.rev");
    cli(&format!(
        "snapshot revoke --store {} --pubkey {} --revoke {} --from 1 --key {} --successor {} --out {}",
        s(&k.store),
        k.public("a"),
        k.public("a"),
        k.key("admin"),
        k.public("b"),
        s(&rev)
    ))
    .ok();
    // Seq 1 was signed by a: the chain now verifies only before it; b continues it.
    k.verify(&k.store, "").fails(1, "revoked from seq 1");
    k.verify(&old, "").ok();
    k.verify(&old, &format!("--revocation {}", s(&rev)))
        .fails(1, "revoked from seq 1");

    // A revocation signed by someone else is refused and changes nothing.
    cli(&format!(
        "snapshot revoke --store {} --pubkey {} --revoke {} --from 1 --key {}",
        s(&k.store),
        k.public("a"),
        k.public("b"),
        k.key("a")
    ))
    .fails(2, "neither the revoked key alone nor a revoker");
    // A damaged revocation file is named.
    let junk = k.path("junk.rev");
    std::fs::write(&junk, b"junk").unwrap();
    k.verify(&old, &format!("--revocation {}", s(&junk)))
        .fails(2, "junk.rev");
}

#[test]
fn a_successor_continues_the_chain_and_a_bundle_carries_the_revocation() {
    let mut k = Keys::new(&["a", "b", "admin"]);
    k.take(&format!(
        "--key {} --revoker {}",
        k.key("a"),
        k.public("admin")
    ))
    .ok();
    k.take(&format!("--key {}", k.key("a"))).ok();
    cli(&format!(
        "snapshot revoke --store {} --pubkey {} --revoke {} --from 2 --key {} --successor {}",
        s(&k.store),
        k.public("a"),
        k.public("a"),
        k.key("admin"),
        k.public("b"),
    ))
    .ok();
    k.take(&format!("--key {}", k.key("a")))
        .fails(2, "a new key joins by rotation");
    k.take(&format!("--key {}", k.key("b"))).ok();
    assert_eq!(k.verify(&k.store, "").ok().json()["seq"], 2);

    let bundle = k.path("all.bundle");
    cli(&format!(
        "snapshot export --store {} --from 0 --out {}",
        s(&k.store),
        s(&bundle)
    ))
    .ok();
    let there = k.path("there");
    cli(&format!(
        "snapshot import --store {} --pubkey {} {}",
        s(&there),
        k.public("a"),
        s(&bundle)
    ))
    .ok();
    assert_eq!(k.verify(&there, "").ok().json()["seq"], 2);
}
