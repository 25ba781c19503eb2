use super::*;
use crate::alg::PageIndex;
use crate::record::Signed;

fn meta(seq: u64) -> StateMeta {
    StateMeta {
        vm_id: "vm-1".into(),
        seq: SeqNo(seq),
        time: UnixTime {
            secs: 100 + seq,
            nanos: 0,
        },
        params: TreeParams::new(HashAlg::Blake3, &[]).unwrap(),
        policy_id: "default".into(),
        version: "0.1.0".into(),
    }
}

fn d(b: u8) -> Digest {
    Digest::new(HashAlg::Blake3, &[b; 32]).unwrap()
}

fn manifest() -> Manifest {
    Manifest {
        meta: meta(3),
        components: vec![
            ComponentRoot {
                name: "mem".into(),
                kind: ComponentKind::Memory,
                len: 8192 * 4,
                root: d(1),
            },
            ComponentRoot {
                name: "disk".into(),
                kind: ComponentKind::Disk,
                len: 4096,
                root: d(2),
            },
        ],
        entries: vec![
            DeltaEntry {
                component: 0,
                page: PageIndex(1),
                change: PageChange::Data,
                digest: d(3),
            },
            DeltaEntry {
                component: 0,
                page: PageIndex(5),
                change: PageChange::Zero,
                digest: d(4),
            },
            DeltaEntry {
                component: 1,
                page: PageIndex(0),
                change: PageChange::Data,
                digest: d(5),
            },
        ],
        batches: vec![BatchRef {
            object: ObjectId([7; 32]),
            pages: 2,
        }],
        anchor: false,
    }
}

#[test]
fn manifest_round_trip_and_checks() {
    let m = manifest();
    let enc = m.encode();
    assert_eq!(Manifest::decode(&enc).unwrap(), m);

    let mut unsorted = m.clone();
    unsorted.entries.swap(0, 1);
    assert_eq!(
        refused_field(&Manifest::decode(&unsorted.encode()).unwrap_err()),
        Some("entry page")
    );

    let mut outside = m.clone();
    outside.entries[2].page = PageIndex(1);
    assert_eq!(
        refused_field(&Manifest::decode(&outside.encode()).unwrap_err()),
        Some("entry page")
    );

    let mut short = m.clone();
    short.batches[0].pages = 1;
    assert_eq!(
        refused_field(&Manifest::decode(&short.encode()).unwrap_err()),
        Some("batch pages")
    );

    for cut in [0, 10, enc.len() / 2, enc.len() - 1] {
        assert!(Manifest::decode(&enc[..cut]).is_err());
    }

    // A version 1 manifest (no anchor byte) still reads, as no anchor.
    let mut v1 = enc[..enc.len() - 1].to_vec();
    v1[10..12].copy_from_slice(&1u16.to_be_bytes());
    let body = u32::try_from(v1.len() - HEADER_LEN).unwrap();
    v1[12..16].copy_from_slice(&body.to_be_bytes());
    assert_eq!(Manifest::decode(&v1).unwrap(), m);
}

#[test]
fn anchor_manifests_carry_literals_only() {
    let mut a = manifest();
    a.anchor = true;
    a.entries[0].change = PageChange::Carried;
    a.entries[2].change = PageChange::Literal;
    let enc = a.encode();
    assert_eq!(Manifest::decode(&enc).unwrap(), a);
    assert_eq!(a.changed_pages(), 2);

    // An anchor holding an XOR could not be applied without the links before it.
    let mut xor = a.clone();
    xor.entries[2].change = PageChange::Data;
    assert_eq!(
        refused_field(&Manifest::decode(&xor.encode()).unwrap_err()),
        Some("entry change")
    );
    // A carried page outside an anchor.
    let mut stray = a.clone();
    stray.anchor = false;
    assert_eq!(
        refused_field(&Manifest::decode(&stray.encode()).unwrap_err()),
        Some("entry change")
    );
    // An anchor flag other than 0 or 1.
    let mut bad = enc.clone();
    let last = bad.len() - 1;
    bad[last] = 2;
    assert_eq!(
        refused_field(&Manifest::decode(&bad).unwrap_err()),
        Some("anchor")
    );
}

#[test]
fn state_root_commits_to_every_field() {
    let m = manifest();
    let base = state_root(&m.meta, &m.components);
    let mut variants = Vec::new();
    let mut x = m.clone();
    x.meta.vm_id = "vm-2".into();
    variants.push(x);
    let mut x = m.clone();
    x.meta.seq = SeqNo(4);
    variants.push(x);
    let mut x = m.clone();
    x.meta.policy_id = "p".into();
    variants.push(x);
    let mut x = m.clone();
    x.components[1].root = d(9);
    variants.push(x);
    let mut x = m.clone();
    x.components[0].len += 1;
    variants.push(x);
    let mut x = m.clone();
    x.components[0].kind = ComponentKind::Disk;
    variants.push(x);
    for v in variants {
        assert_ne!(state_root(&v.meta, &v.components), base);
    }
}

#[test]
fn delta_digest_depends_on_entries() {
    let m = manifest();
    let a = delta_digest(HashAlg::Blake3, &m.entries);
    let mut e = m.entries.clone();
    e[1].digest = d(8);
    assert_ne!(delta_digest(HashAlg::Blake3, &e), a);
    assert_ne!(delta_digest(HashAlg::Blake3, &m.entries[..2]), a);
    assert_ne!(delta_digest(HashAlg::Blake3, &[]), a);
}

/// The BLAKE3 delta digest, written the slow way with the crate's public keyed hash.
fn reference_delta(entries: &[DeltaEntry]) -> [u8; 32] {
    let leaf_key = *blake3::hash(b"vmattest delta leaf v2").as_bytes();
    let node_key = *blake3::hash(b"vmattest delta node v2").as_bytes();
    let mut level: Vec<[u8; 32]> = entries
        .iter()
        .map(|e| {
            let mut m = [0u8; 64];
            m[..2].copy_from_slice(&e.component.to_be_bytes());
            m[2..10].copy_from_slice(&e.page.0.to_be_bytes());
            m[32..].copy_from_slice(e.digest.as_bytes());
            *blake3::keyed_hash(&leaf_key, &m).as_bytes()
        })
        .collect();
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|p| match p {
                [l, r] => *blake3::keyed_hash(&node_key, &[*l, *r].concat()).as_bytes(),
                [one] => *one,
                _ => unreachable!(),
            })
            .collect();
    }
    level[0]
}

#[test]
fn blake3_delta_digest_matches_keyed_hash() {
    // Counts around the 16-wide kernel, odd levels, and the parallel task size.
    for n in [1usize, 2, 3, 5, 16, 17, 33, 4095, 4096, 4097, 9001] {
        let entries: Vec<DeltaEntry> = (0..n)
            .map(|i| DeltaEntry {
                component: u16::try_from(i % 3).unwrap(),
                page: PageIndex(i as u64 * 7),
                change: PageChange::Data,
                digest: Digest::new(HashAlg::Blake3, blake3::hash(&i.to_le_bytes()).as_bytes())
                    .unwrap(),
            })
            .collect();
        let got = delta_digest(HashAlg::Blake3, &entries);
        assert_eq!(got.as_bytes(), reference_delta(&entries), "{n} entries");
    }
}

fn link(seq: u64) -> Link {
    Link {
        seq: SeqNo(seq),
        prev: d(1),
        delta: d(2),
        state_root: d(3),
        manifest: ObjectId([4; 32]),
        time: UnixTime { secs: 5, nanos: 6 },
        key_ids: vec![KeyId([9; 32])],
        announce: Announce::default(),
    }
}

#[test]
fn link_round_trip_and_digest() {
    let link = link(2);
    let enc = link.encode().unwrap();
    assert_eq!(Link::decode(&enc).unwrap(), link);
    let s = Signed::new(link.clone()).unwrap();
    let mut other = link.clone();
    other.seq = SeqNo(3);
    assert_ne!(link_digest(&s), link_digest(&Signed::new(other).unwrap()));
    let mut bad = enc.clone();
    bad[16] = 9;
    assert_eq!(
        refused_field(&Link::decode(&bad).unwrap_err()),
        Some("hash algorithm")
    );
}

/// The field a decoder refused.
fn refused_field(e: &RecordError) -> Option<&'static str> {
    match e {
        RecordError::Wire(w) => w.field(),
        _ => None,
    }
}

fn signed_link(seq: u64) -> SignedLink {
    let mut s = Signed::new(link(seq)).unwrap();
    s.signatures.push(crate::record::SignatureEntry {
        alg: crate::sig::SigAlg::Ed25519,
        key_id: KeyId([9; 32]),
        signature: vec![1; 64],
    });
    s
}

fn rebase(seq: u64) -> Rebase {
    Rebase {
        origin: d(10),
        origin_root: d(11),
        link: signed_link(seq),
        manifest: ObjectId([12; 32]),
        delta: d(13),
        key_links: Vec::new(),
        time: UnixTime { secs: 7, nanos: 8 },
        key_ids: vec![KeyId([9; 32])],
    }
}

#[test]
fn rebase_round_trip_and_checks() {
    let r = rebase(4);
    let enc = r.encode().unwrap();
    assert_eq!(Rebase::decode(&enc).unwrap(), r);
    assert_eq!(r.seq(), SeqNo(4));

    // The embedded link is for another seq than the rebase says.
    let mut bad = enc.clone();
    bad[HEADER_LEN + 1..HEADER_LEN + 9].copy_from_slice(&5u64.to_be_bytes());
    assert_eq!(
        refused_field(&Rebase::decode(&bad).unwrap_err()),
        Some("embedded link")
    );
    // Seq 0 is the chain's own baseline, never a fold.
    assert_eq!(
        refused_field(&Rebase::decode(&rebase(0).encode().unwrap()).unwrap_err()),
        Some("seq")
    );
    // Truncated anywhere: refused, naming a field.
    for cut in [HEADER_LEN + 3, enc.len() / 2, enc.len() - 1] {
        assert!(Rebase::decode(&enc[..cut]).is_err(), "cut at {cut}");
    }
    // Digests of two algorithms in one rebase are refused when encoding.
    let mut mixed = rebase(4);
    mixed.origin = Digest::new(HashAlg::Sha256, &[1; 32]).unwrap();
    assert!(matches!(mixed.encode(), Err(RecordError::Inconsistent(_))));
    // Oversize: refused before decoding.
    let big = vec![0u8; Kind::Rebase.max_body() + HEADER_LEN + 1];
    assert!(Rebase::decode(&big).is_err());
}
