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
    }
}

#[test]
fn manifest_round_trip_and_checks() {
    let m = manifest();
    let enc = m.encode();
    assert_eq!(Manifest::decode(&enc).unwrap(), m);

    let mut unsorted = m.clone();
    unsorted.entries.swap(0, 1);
    assert!(
        Manifest::decode(&unsorted.encode())
            .unwrap_err()
            .to_string()
            .contains("sorted")
    );

    let mut outside = m.clone();
    outside.entries[2].page = PageIndex(1);
    assert!(
        Manifest::decode(&outside.encode())
            .unwrap_err()
            .to_string()
            .contains("inside its component")
    );

    let mut short = m.clone();
    short.batches[0].pages = 1;
    assert!(
        Manifest::decode(&short.encode())
            .unwrap_err()
            .to_string()
            .contains("covering every data entry")
    );

    for cut in [0, 10, enc.len() / 2, enc.len() - 1] {
        assert!(Manifest::decode(&enc[..cut]).is_err());
    }
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

#[test]
fn link_round_trip_and_digest() {
    let link = Link {
        seq: SeqNo(2),
        prev: d(1),
        delta: d(2),
        state_root: d(3),
        manifest: ObjectId([4; 32]),
        time: UnixTime { secs: 5, nanos: 6 },
        key_ids: vec![KeyId([9; 32])],
    };
    let enc = link.encode().unwrap();
    assert_eq!(Link::decode(&enc).unwrap(), link);
    let s = Signed::new(link.clone()).unwrap();
    let mut other = link.clone();
    other.seq = SeqNo(3);
    assert_ne!(link_digest(&s), link_digest(&Signed::new(other).unwrap()));
    let mut bad = enc.clone();
    bad[16] = 9;
    assert!(
        Link::decode(&bad)
            .unwrap_err()
            .to_string()
            .contains("hash algorithm")
    );
}
