#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use crate::alg::{HashAlg, PageIndex};
use crate::record::{RecordError, Signable, UnixTime};
use crate::sig::KeyId;
use crate::wire::WireError;

const MAP: &str = "ffffffff81000000 T _text\nffffffff81001000 T _stext\nffffffff81a00123 T _etext\nffffffff82000000 D sys_call_table\n";

const POLICY: &str = r#"
name = "kernel"
hash = "sha256"
schedule_secs = 30
kernel_load = 0x1000000

[[region]]
name = "text"
symbols = ["_stext", "_etext"]
weight = 10
critical = true
kernel_code = true

[[region]]
name = "low"
start = 0x1000
len = 0x3000
sample = 2

[[subset]]
id = "code"
regions = ["text"]
"#;

fn policy() -> Policy {
    Policy::parse(POLICY, Some(&SystemMap::parse(MAP).unwrap())).unwrap()
}

#[test]
fn symbols_resolve_to_whole_physical_pages() {
    let p = policy();
    let text = p.region("text").unwrap();
    assert_eq!(text.start, GuestAddr(0x1001000));
    // _etext at +0xa00123 rounds up to the next page.
    assert_eq!(text.end(), 0x1a01000);
    assert_eq!(p.region("low").unwrap().pages, 3);
    assert_eq!(p.subset("code").unwrap().regions, vec!["text".to_string()]);
    assert_eq!(p.subset("all").unwrap().regions.len(), 2);
}

#[test]
fn resolved_policy_round_trips_through_toml_with_the_same_id() {
    let p = policy();
    let again = Policy::parse(&p.to_toml(), None).unwrap();
    assert_eq!(again, p);
    assert_eq!(again.id(), p.id());
}

/// The field, expectation and finding of a policy value that cannot hold.
fn policy_field(e: AttestError) -> (String, String, String) {
    match e {
        AttestError::Policy {
            field,
            expected,
            found,
        } => (field, expected, found),
        other => panic!("{other:?}"),
    }
}

#[test]
fn policy_errors_name_the_field() {
    let (field, ..) = policy_field(Policy::parse(POLICY, None).unwrap_err());
    assert_eq!(field, "region text.symbols");
    let (field, _, found) =
        policy_field(Policy::parse(&POLICY.replace("sha256", "md5"), None).unwrap_err());
    assert_eq!((field.as_str(), found.as_str()), ("hash", "md5"));
    let (field, _, found) = policy_field(
        Policy::parse(
            &POLICY.replace("sample = 2", "sample = 9"),
            Some(&SystemMap::parse(MAP).unwrap()),
        )
        .unwrap_err(),
    );
    assert_eq!((field.as_str(), found.as_str()), ("region low.sample", "9"));
    let e = Policy::parse("name = \"x\"\nbogus = 1\n", None).unwrap_err();
    assert!(matches!(e, AttestError::PolicySyntax(_)), "{e:?}");
    let big = "#".repeat(policy::MAX_POLICY_BYTES + 1);
    assert!(Policy::parse(&big, None).is_err());
}

#[test]
fn system_map_errors_name_the_line() {
    let e = SystemMap::parse("ffff T _text\nzz T x\n").unwrap_err();
    assert!(matches!(e, AttestError::SystemMap { line: 2, .. }), "{e:?}");
    let e = SystemMap::parse("ffff T other\n").unwrap_err();
    // Line 0: the file as a whole lacks the kernel's first symbol.
    assert!(matches!(e, AttestError::SystemMap { line: 0, .. }), "{e:?}");
    let e = PolicyFile::parse(&POLICY.replace("_etext", "_nope"))
        .unwrap()
        .resolve(Some(&SystemMap::parse(MAP).unwrap()))
        .unwrap_err();
    assert_eq!(e, AttestError::UnknownSymbol("_nope".into()));
}

#[test]
fn sampling_is_deterministic_distinct_and_nonce_dependent() {
    let p = policy();
    let low = p.region("low").unwrap();
    let a = sample_pages(&[1; 32], low);
    assert_eq!(a, sample_pages(&[1; 32], low));
    assert_eq!(a.len(), 2);
    assert!(a[0] < a[1] && a[1].0 < 3);
    let text = p.region("text").unwrap();
    assert_eq!(sample_pages(&[1; 32], text).len() as u64, text.pages);
    let mut big = low.clone();
    big.pages = 1 << 18;
    big.sample = 64;
    assert_ne!(sample_pages(&[1; 32], &big), sample_pages(&[2; 32], &big));
}

#[test]
fn region_digest_binds_name_index_and_content() {
    let d = |b: u8| page_digest(HashAlg::Sha256, &[b; 4096]);
    let base = region_digest(HashAlg::Sha256, "r", &[(PageIndex(0), d(1))]);
    assert_ne!(
        base,
        region_digest(HashAlg::Sha256, "s", &[(PageIndex(0), d(1))])
    );
    assert_ne!(
        base,
        region_digest(HashAlg::Sha256, "r", &[(PageIndex(1), d(1))])
    );
    assert_ne!(
        base,
        region_digest(HashAlg::Sha256, "r", &[(PageIndex(0), d(2))])
    );
}

pub(super) fn evidence() -> Evidence {
    let p = policy();
    Evidence {
        vm: "vm1".into(),
        time: UnixTime { secs: 7, nanos: 9 },
        nonce: vec![5; 32],
        alg: p.alg,
        policy_id: p.id(),
        subset: "all".into(),
        regions: vec![RegionDigest {
            name: "text".into(),
            pages: 2560,
            digest: HashAlg::Sha256.hash(&[b"x"]),
            sites: Some(SiteEvidence::Whole(SiteReport {
                states: vec![
                    SiteState::Nop,
                    SiteState::Nop,
                    SiteState::Other,
                    SiteState::Jump,
                ],
                others: vec![vec![0xcc, 0x90]],
                targets: vec![Some(-5), None],
                digest: HashAlg::Sha256.hash(&[b"s"]),
            })),
        }],
        kernel_code: Some(HashAlg::Sha256.hash(&[b"k"])),
        kernel_code_sites: None,
        agent_version: "0.1.0".into(),
        key_ids: vec![KeyId([3; 32])],
    }
}

#[test]
fn evidence_round_trips_and_every_truncation_is_refused() {
    let e = evidence();
    let bytes = e.encode().unwrap();
    assert_eq!(Evidence::decode(&bytes).unwrap(), e);
    for n in 0..bytes.len() {
        assert!(Evidence::decode(&bytes[..n]).is_err(), "prefix {n}");
    }
    let mut short = e.clone();
    short.nonce = vec![1; 8];
    assert!(short.encode().is_err());
}

#[test]
fn a_site_report_named_by_fingerprint_round_trips_in_v4_only() {
    let mut e = evidence();
    let whole = e.regions[0]
        .sites
        .as_ref()
        .unwrap()
        .whole()
        .unwrap()
        .clone();
    let print = whole.fingerprint();
    assert_eq!(print.alg(), HashAlg::Blake3);
    let mut other = whole.clone();
    other.targets[0] = Some(-6);
    assert_ne!(
        other.fingerprint(),
        print,
        "every field is in the fingerprint"
    );
    e.regions[0].sites = Some(SiteEvidence::Same(print));
    let bytes = e.encode().unwrap();
    assert_eq!(Evidence::decode(&bytes).unwrap(), e);
    for n in 0..bytes.len() {
        assert!(Evidence::decode(&bytes[..n]).is_err(), "prefix {n}");
    }
    // The form byte follows the region's digest; version 3 has no form 3.
    assert!(
        bytes
            .windows(33)
            .any(|w| w[0] == 3 && w[1..] == *print.as_bytes())
    );
    let mut v3 = bytes.clone();
    v3[10..12].copy_from_slice(&3u16.to_be_bytes());
    let err = Evidence::decode(&v3).unwrap_err().to_string();
    assert!(err.contains("expected 0, 1 or 2"), "{err}");
    // The kernel-code report may be named so too.
    let mut k = evidence();
    k.kernel_code_sites = Some(SiteEvidence::Same(print));
    assert_eq!(Evidence::decode(&k.encode().unwrap()).unwrap(), k);
}

#[test]
fn snapshot_report_verdict_byte_must_agree() {
    let d = HashAlg::Sha256.hash(&[b"a"]);
    let r = SnapshotReport {
        vm: "vm1".into(),
        time: UnixTime { secs: 1, nanos: 0 },
        nonce: vec![],
        seq: crate::chain::SeqNo(3),
        link: d,
        components: vec![ComponentCheck {
            name: "ram".into(),
            expected: d,
            found: d,
        }],
        key_ids: vec![KeyId([3; 32])],
    };
    assert!(r.matches());
    let mut bytes = r.encode().unwrap();
    assert_eq!(SnapshotReport::decode(&bytes).unwrap(), r);
    // The verdict byte sits right before the component count.
    let at = bytes.len() - 1 - 32 - 4 - (4 + 3 + 32 + 32) - 1;
    assert_eq!(bytes[at], 1);
    bytes[at] = 0;
    let e = SnapshotReport::decode(&bytes).unwrap_err();
    assert!(
        matches!(
            e,
            RecordError::Wire(WireError::BadValue {
                field: "verdict",
                ..
            })
        ),
        "{e:?}"
    );
}

#[test]
fn appraisal_scores_by_weight_and_zeroes_on_critical_miss() {
    let o = |name: &str, weight, critical, kernel_code, matched| RegionOutcome {
        name: name.into(),
        weight,
        critical,
        kernel_code,
        matched,
        detail: None,
    };
    let all = appraise(
        &[o("t", 10, true, true, true), o("d", 1, false, false, true)],
        false,
    );
    assert_eq!((all.score, all.status), (100, Status::Affirming));
    let warn = appraise(
        &[o("t", 3, true, true, true), o("d", 1, false, false, false)],
        false,
    );
    assert_eq!((warn.score, warn.status), (75, Status::Warning));
    assert_eq!(warn.vector.configuration, score::code::UNSAFE_CONFIG);
    let bad = appraise(
        &[o("t", 10, true, true, false), o("d", 1, false, false, true)],
        true,
    );
    assert_eq!((bad.score, bad.status), (0, Status::Contraindicated));
    assert_eq!(bad.vector.executables, score::code::CONTRAINDICATED_RUNTIME);
    assert_eq!(bad.vector.hardware, score::code::GENUINE_HARDWARE);
}
