#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proptest::prelude::*;
use sha2::{Digest as _, Sha256};

use super::*;
use crate::alg::{Digest, HashAlg};
use crate::class::Classify as _;
use crate::record::{RecordError, Signable, SignatureEntry, Signed, UnixTime};
use crate::sig::{KeyId, SigAlg};
use crate::wire::{Kind, WireError};

const KEY: KeyId = KeyId([5; 32]);

fn salt(i: usize) -> Vec<u8> {
    vec![u8::try_from(i % 251).unwrap(); 16 + i % 49]
}

fn opening(n: usize) -> ConfigOpening {
    ConfigOpening::new(
        (0..n)
            .map(|i| {
                (
                    ConfigParam::new(format!("p{i:02}"), format!("v{i}")),
                    salt(i),
                )
            })
            .collect(),
    )
    .unwrap()
}

fn example() -> ConfigOpening {
    let params = [
        ("vcpus", "2"),
        ("memory_mib", "2048"),
        ("nic.0.mac", "52:54:00:12:34:56"),
        ("kernel.sha256", "ab12"),
        ("cmdline", "console=ttyS0 root=/dev/vda"),
    ];
    ConfigOpening::new(
        params
            .iter()
            .enumerate()
            .map(|(i, (n, v))| (ConfigParam::new(*n, *v), salt(i)))
            .collect(),
    )
    .unwrap()
}

fn sign(st: ConfigStatement) -> SignedConfigStatement {
    let mut s = Signed::new(st).unwrap();
    s.signatures.push(SignatureEntry {
        alg: SigAlg::Ed25519,
        key_id: KEY,
        signature: vec![1; 64],
    });
    s
}

fn statement_for(o: &ConfigOpening) -> SignedConfigStatement {
    sign(o.statement(
        "vm-1",
        UnixTime {
            secs: 1_700_000_000,
            nanos: 5,
        },
        &[7; 32],
        vec![KEY],
    ))
}

/// RFC 6962 MTH written out independently with sha2, over the salted leaves.
fn reference_root(leaves: &[[u8; 32]]) -> [u8; 32] {
    if leaves.len() == 1 {
        let mut h = Sha256::new();
        h.update([0u8]);
        h.update(leaves[0]);
        return h.finalize().into();
    }
    let mut k = 1;
    while k * 2 < leaves.len() {
        k *= 2;
    }
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(reference_root(&leaves[..k]));
    h.update(reference_root(&leaves[k..]));
    h.finalize().into()
}

fn reference_leaf(name: &str, value: &str, salt: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"vmattest config-leaf v1\0");
    for part in [salt, name.as_bytes(), value.as_bytes()] {
        h.update(u32::try_from(part.len()).unwrap().to_be_bytes());
        h.update(part);
    }
    h.finalize().into()
}

#[test]
fn root_matches_an_independent_rfc6962_computation() {
    for n in 1..=17 {
        let o = opening(n);
        let leaves: Vec<[u8; 32]> = o
            .params()
            .iter()
            .map(|(p, s)| reference_leaf(&p.name, &p.value, s))
            .collect();
        assert_eq!(o.root().as_bytes(), reference_root(&leaves), "n {n}");
        assert_eq!(o.root().alg(), HashAlg::Sha256);
    }
}

#[test]
fn params_are_sorted_by_name_and_input_order_does_not_matter() {
    let o = example();
    let names: Vec<_> = o.params().iter().map(|(p, _)| p.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "cmdline",
            "kernel.sha256",
            "memory_mib",
            "nic.0.mac",
            "vcpus"
        ]
    );
    let mut reversed = o.params().to_vec();
    reversed.reverse();
    assert_eq!(ConfigOpening::new(reversed).unwrap().root(), o.root());

    let list = ConfigList::new(vec![
        ConfigParam::new("vcpus", "2"),
        ConfigParam::new("cmdline", "x"),
    ])
    .unwrap();
    assert_eq!(list.params()[0].name, "cmdline");
    assert_eq!(list.get("vcpus").unwrap().value, "2");
    assert!(list.get("nope").is_none());
    let o = list.salted(vec![vec![1; 16], vec![2; 16]]).unwrap();
    assert_eq!(o.params()[0].1, vec![1; 16]);
}

#[test]
fn root_changes_with_any_name_value_or_salt() {
    let o = example();
    let base = o.root();
    for i in 0..o.len() {
        let change = |f: &dyn Fn(&mut ConfigParam, &mut Vec<u8>)| {
            let mut params = o.params().to_vec();
            let (p, s) = &mut params[i];
            f(p, s);
            ConfigOpening::new(params).unwrap().root()
        };
        assert_ne!(change(&|p, _| p.name.push('x')), base, "name {i}");
        assert_ne!(change(&|p, _| p.value.push('x')), base, "value {i}");
        assert_ne!(change(&|_, s| s[0] ^= 1), base, "salt {i}");
        assert_ne!(change(&|_, s| s.push(0)), base, "salt length {i}");
    }
    // Moving bytes between name and value changes the leaf (length prefixes).
    assert_ne!(
        leaf_digest("ab", "c", &[0; 16]),
        leaf_digest("a", "bc", &[0; 16])
    );
}

#[test]
fn every_index_of_trees_of_1_to_17_leaves_discloses_and_verifies() {
    for n in 1..=17usize {
        let o = opening(n);
        let st = statement_for(&o);
        for (i, (p, s)) in o.params().iter().enumerate() {
            let d = o.disclose(&p.name).unwrap();
            assert_eq!((d.index, d.count), (i as u64, n as u64));
            assert_eq!(&d.salt, s);
            assert_eq!(Some(d.path.len()), path_len(d.index, d.count));
            assert!(d.path.len() <= MAX_PATH_LEN);
            assert_eq!(d.root().unwrap(), o.root(), "n {n} index {i}");

            let bytes = o.disclose_signed(&p.name, &st).unwrap();
            let (param, signed) = verify_disclosure(&bytes).unwrap();
            assert_eq!(&param, p);
            assert_eq!(signed, st);
            let (again, _) = Disclosure::decode(&bytes).unwrap();
            assert_eq!(again, d);
            assert_eq!(again.encode(&st).unwrap(), bytes);
        }
    }
    assert_eq!(path_len(0, MAX_PARAMS as u64), Some(MAX_PATH_LEN));
    assert_eq!(path_len(3, 3), None);
    assert_eq!(path_len(0, 0), None);
    assert_eq!(path_len(0, MAX_PARAMS as u64 + 1), None);
}

#[test]
fn tampered_disclosures_are_rejected() {
    let o = opening(11);
    let st = statement_for(&o);
    let good = o.disclose("p06").unwrap();
    let check = |d: &Disclosure| verify_disclosure(&d.encode(&st)?);
    assert!(check(&good).is_ok());

    let mut d = good.clone();
    d.value.push('!');
    assert!(matches!(
        check(&d),
        Err(ConfigError::DisclosureMismatch { field: "root", .. })
    ));
    assert_eq!(
        check(&d).map(drop).unwrap_err().class(),
        ErrorClass::Verification
    );

    let mut d = good.clone();
    d.salt[3] ^= 0x80;
    assert!(matches!(
        check(&d),
        Err(ConfigError::DisclosureMismatch { field: "root", .. })
    ));

    for k in 0..good.path.len() {
        let mut d = good.clone();
        let mut b = d.path[k].as_bytes().to_vec();
        b[31] ^= 1;
        d.path[k] = Digest::new(HashAlg::Sha256, &b).unwrap();
        assert!(check(&d).is_err(), "path {k}");
    }

    // Another index of the same count: the path no longer leads to the root.
    for index in (0..11).filter(|&i| i != 6) {
        let mut d = good.clone();
        d.index = index;
        let r = check(&d);
        assert!(r.is_err(), "index {index}");
    }
    let mut d = good.clone();
    d.index = 11;
    assert!(matches!(
        check(&d),
        Err(ConfigError::Disclosure { field: "index", .. })
    ));

    // A count the statement does not state.
    let mut d = good.clone();
    d.count = 12;
    assert!(matches!(
        check(&d),
        Err(ConfigError::DisclosureMismatch { field: "count", .. })
    ));
    let mut d = good.clone();
    d.count = 0;
    assert!(check(&d).is_err());

    // A path with one digest too many or too few.
    let mut d = good.clone();
    d.path.push(d.path[0]);
    assert!(matches!(
        check(&d),
        Err(ConfigError::Disclosure { field: "path", .. })
    ));
    assert_eq!(check(&d).map(drop).unwrap_err().class(), ErrorClass::Input);
    let mut d = good.clone();
    d.path.pop();
    assert!(d.root().is_err());

    // A statement over another root.
    let mut other = o.params().to_vec();
    other[0].0.value.push('x');
    let other = ConfigOpening::new(other).unwrap();
    let wrong = statement_for(&other);
    let bytes = good.encode(&wrong).unwrap();
    assert!(matches!(
        verify_disclosure(&bytes),
        Err(ConfigError::DisclosureMismatch { field: "root", .. })
    ));
    assert!(matches!(
        o.disclose_signed("p06", &wrong),
        Err(ConfigError::DisclosureMismatch { field: "root", .. })
    ));
    assert_eq!(
        o.disclose("p99"),
        Err(ConfigError::Unknown("p99".to_owned()))
    );
}

#[test]
fn every_byte_flip_before_the_statement_is_rejected() {
    let o = example();
    let st = statement_for(&o);
    let bytes = o.disclose_signed("memory_mib", &st).unwrap();
    let statement_len = st.encode().unwrap().len();
    let end = bytes.len() - statement_len;
    for at in 0..end {
        let mut b = bytes.clone();
        b[at] ^= 0x01;
        assert!(verify_disclosure(&b).is_err(), "byte {at}");
    }
}

#[test]
fn encodings_round_trip_and_every_truncation_is_refused() {
    let o = example();
    let enc = o.encode();
    assert_eq!(ConfigOpening::decode(&enc).unwrap(), o);
    for cut in 0..enc.len() {
        assert!(
            ConfigOpening::decode(&enc[..cut]).is_err(),
            "opening cut {cut}"
        );
    }
    let mut long = enc.clone();
    long.push(0);
    assert!(ConfigOpening::decode(&long).is_err());

    let st = statement_for(&o);
    let object = st.value().encode().unwrap();
    assert_eq!(&ConfigStatement::decode(&object).unwrap(), st.value());
    for cut in 0..object.len() {
        assert!(
            ConfigStatement::decode(&object[..cut]).is_err(),
            "statement cut {cut}"
        );
    }
    let signed = st.encode().unwrap();
    assert_eq!(SignedConfigStatement::decode(&signed).unwrap(), st);

    let bytes = o.disclose_signed("vcpus", &st).unwrap();
    for cut in 0..bytes.len() {
        assert!(
            matches!(
                Disclosure::decode(&bytes[..cut]),
                Err(ConfigError::Wire(WireError::Truncated { .. }))
            ),
            "disclosure cut {cut}"
        );
    }
    let mut long = bytes.clone();
    long.extend_from_slice(&[0; 2]);
    assert!(matches!(
        Disclosure::decode(&long),
        Err(ConfigError::Wire(WireError::Trailing { count: 2, .. }))
    ));
    let big = vec![0u8; Kind::ConfigDisclosure.max_body() + 17];
    assert!(matches!(
        Disclosure::decode(&big),
        Err(ConfigError::Wire(WireError::Oversize { .. }))
    ));
    // A statement object is not a disclosure, and the other way round.
    assert!(matches!(
        Disclosure::decode(&object),
        Err(ConfigError::Wire(WireError::WrongKind { found: 10, .. }))
    ));
    assert!(matches!(
        ConfigStatement::decode(&bytes),
        Err(RecordError::Wire(WireError::WrongKind { found: 11, .. }))
    ));
}

#[test]
fn opening_decoder_refuses_unsorted_repeated_and_out_of_range_entries() {
    let enc = |entries: &[(&str, &str, &[u8])]| {
        let mut w = crate::wire::Writer::new();
        w.raw(OPENING_MAGIC)
            .u32(u32::try_from(entries.len()).unwrap());
        for (n, v, s) in entries {
            w.bytes(n.as_bytes()).bytes(v.as_bytes()).bytes(s);
        }
        w.finish()
    };
    let s16: &[u8] = &[0; 16];
    assert!(ConfigOpening::decode(&enc(&[("a", "1", s16), ("b", "2", s16)])).is_ok());
    for (entries, field) in [
        (vec![("b", "1", s16), ("a", "2", s16)], "param name"),
        (vec![("a", "1", s16), ("a", "2", s16)], "param name"),
        (vec![("A", "1", s16)], "param name"),
        (vec![("a", "1", &[0u8; 15][..])], "salt"),
        (vec![("a", "1", &[0u8; 65][..])], "salt"),
        (vec![], "param count"),
    ] {
        let e = ConfigOpening::decode(&enc(&entries)).unwrap_err();
        assert_eq!(refused_field(&e), Some(field), "{e:?}");
    }
    let mut b = enc(&[("a", "1", s16)]);
    b[0] = b'X';
    assert_eq!(
        refused_field(&ConfigOpening::decode(&b).unwrap_err()),
        Some("magic")
    );
}

#[test]
fn out_of_range_params_are_refused_naming_param_and_field() {
    let p = |n: &str, v: &str| ConfigParam::new(n, v);
    let bad_name = ["", "Vcpus", "vcpus ", "vcpü", &"a".repeat(MAX_NAME_LEN + 1)];
    for name in bad_name {
        let e = ConfigList::new(vec![p("ok", "1"), p(name, "2")]).unwrap_err();
        assert!(
            matches!(
                &e,
                ConfigError::Param {
                    index: 1,
                    field: "name",
                    ..
                }
            ),
            "{name:?}: {e}"
        );
    }
    assert!(ConfigList::new(vec![p(&"a".repeat(MAX_NAME_LEN), "")]).is_ok());
    assert!(ConfigList::new(vec![p("cmdline", &"x".repeat(MAX_VALUE_LEN))]).is_ok());
    let e = ConfigList::new(vec![p("cmdline", &"x".repeat(MAX_VALUE_LEN + 1))]).unwrap_err();
    assert!(
        matches!(&e, ConfigError::Param { index: 0, field: "value", name, .. } if name == "cmdline"),
        "{e}"
    );
    let e = ConfigList::new(vec![p("a", "1"), p("b", "2"), p("a", "3")]).unwrap_err();
    assert_eq!(
        e,
        ConfigError::Duplicate {
            index: 2,
            first: 0,
            name: "a".into()
        }
    );
    assert!(matches!(
        ConfigList::new(vec![]),
        Err(ConfigError::Count { found: 0, .. })
    ));

    for len in [0, 15, 65] {
        let e = ConfigOpening::new(vec![(p("vcpus", "2"), vec![0; len])]).unwrap_err();
        assert!(
            matches!(&e, ConfigError::Param { field: "salt", name, .. } if name == "vcpus"),
            "{len}: {e}"
        );
        assert!(
            matches!(&e, ConfigError::Param { found, .. } if *found == format!("{len} bytes")),
            "{e:?}"
        );
    }
    let list = ConfigList::new(vec![p("a", "1")]).unwrap();
    assert!(matches!(
        list.salted(vec![]),
        Err(ConfigError::Count { found: 0, .. })
    ));
}

#[test]
fn statement_fields_are_checked_both_ways() {
    let o = example();
    let good = statement_for(&o).value().clone();
    let mut s = good.clone();
    s.vm = ".hidden".into();
    assert_eq!(refused_field(&s.encode().unwrap_err().into()), Some("vm"));
    let mut s = good.clone();
    s.count = 0;
    assert_eq!(
        refused_field(&s.encode().unwrap_err().into()),
        Some("param count")
    );
    let mut s = good.clone();
    s.root = HashAlg::Blake3.hash(&[b"x"]);
    assert_eq!(
        refused_field(&s.encode().unwrap_err().into()),
        Some("root algorithm")
    );
    let mut s = good.clone();
    s.quote_nonce = vec![0; MAX_QUOTE_NONCE_LEN + 1];
    assert!(s.encode().is_err());
    let mut s = good.clone();
    s.quote_nonce.clear();
    assert_eq!(ConfigStatement::decode(&s.encode().unwrap()).unwrap(), s);

    // The count sits after vm, time, alg and root; the alg byte after vm and time.
    let bytes = good.encode().unwrap();
    let alg_at = 16 + 4 + good.vm.len() + 12;
    let mut b = bytes.clone();
    b[alg_at] = 1;
    assert_eq!(
        refused_field(&ConfigStatement::decode(&b).unwrap_err().into()),
        Some("root algorithm")
    );
    let mut b = bytes.clone();
    b[alg_at + 33..alg_at + 37].copy_from_slice(&0u32.to_be_bytes());
    assert_eq!(
        refused_field(&ConfigStatement::decode(&b).unwrap_err().into()),
        Some("param count")
    );
    let mut b = bytes.clone();
    b[alg_at + 33..alg_at + 37].copy_from_slice(&65537u32.to_be_bytes());
    assert!(ConfigStatement::decode(&b).is_err());
}

fn name_strategy() -> impl Strategy<Value = String> {
    "[a-z0-9._-]{1,12}"
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_configs_disclose_every_param(
        entries in prop::collection::btree_map(
            name_strategy(),
            ("\\PC{0,40}", prop::collection::vec(any::<u8>(), 16..=64)),
            1..40,
        ),
        flip in any::<prop::sample::Index>(),
    ) {
        let params: Vec<_> = entries
            .iter()
            .map(|(n, (v, s))| (ConfigParam::new(n.clone(), v.clone()), s.clone()))
            .collect();
        let o = ConfigOpening::new(params).unwrap();
        prop_assert_eq!(ConfigOpening::decode(&o.encode()).unwrap(), o.clone());
        let leaves: Vec<[u8; 32]> = o
            .params()
            .iter()
            .map(|(p, s)| reference_leaf(&p.name, &p.value, s))
            .collect();
        let root = o.root();
        prop_assert_eq!(root.as_bytes(), &reference_root(&leaves)[..]);
        let st = statement_for(&o);
        for (p, _) in o.params() {
            let bytes = o.disclose_signed(&p.name, &st).unwrap();
            let (param, _) = verify_disclosure(&bytes).unwrap();
            prop_assert_eq!(&param, p);
        }
        // Flipping a byte of one disclosure before its statement breaks it.
        let name = &o.params()[flip.index(o.len())].0.name;
        let bytes = o.disclose_signed(name, &st).unwrap();
        let end = bytes.len() - st.encode().unwrap().len();
        let mut b = bytes.clone();
        b[flip.index(end)] ^= 0x20;
        prop_assert!(verify_disclosure(&b).is_err());
    }
}

/// The field a decoder (or encoder) refused, through any wrapping.
fn refused_field(e: &ConfigError) -> Option<&'static str> {
    match e {
        ConfigError::Wire(w) | ConfigError::Record(RecordError::Wire(w)) => w.field(),
        _ => None,
    }
}
