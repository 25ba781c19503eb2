//! JSON request bodies of the attestation server (crates/api), deserialized as the server
//! does (`serde_json::from_slice`) and fed to what the server decodes from them: PEM keys and
//! TPM key certifications, policies, baseline digests, config check openings and statements,
//! reference configurations, the locate exchange's page digests and page bytes (named against
//! a baseline page, patch sites zeroed), host quotes with their event logs, host policies, held
//! keys and key release requests. The first byte picks the body type. Evidence and report bodies
//! are binary: see the `evidence` and `report` targets.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use vmattest_api::host::{HostEvidence, HostPolicy, KeyRelease, VmKey, replay};
use vmattest_api::{
    CertifyDoc, ConfigCheckRequest, LocateRequest, NewBaseline, NewHost, NewPolicy,
    NewReferenceConfig, NewSnapshotRequest, NewToken, NewVm, PagesRequest, Role, VmPolicy,
};
use vmattest_core::alg::{Digest, HashAlg};
use vmattest_core::alg::{PAGE_SIZE, PageIndex};
use vmattest_core::attest::Policy;
use vmattest_core::attest::locate::{describe, diff_page, differing_pages};
use vmattest_core::attest::{GuestAddr, PatchSite};
use vmattest_core::config::{ConfigOpening, Reference, SignedConfigStatement};
use vmattest_fuzz::select;
use vmattest_quote::{
    KeyCertification, Signature, check_key_certification, parse_attest, parse_ecc_public,
};
use vmattest_sign::PublicKey;

fn body<T: DeserializeOwned>(bytes: &[u8]) -> Option<T> {
    serde_json::from_slice(bytes).ok()
}

/// The certification check of a TPM-backed host key, as the server runs it.
fn certify(key_sec1: &[u8], ak_hex: &str, doc: &CertifyDoc) {
    let Ok(ak) = hex::decode(ak_hex) else { return };
    let Ok([key, attest, signature, nonce]) = doc.decode() else {
        return;
    };
    let cert = KeyCertification {
        key: &key,
        attest: &attest,
        signature: &signature,
        nonce: &nonce,
    };
    let _ = check_key_certification(key_sec1, &ak, &cert);
}

fuzz_target!(|data: &[u8]| {
    let (case, rest) = select(data);
    match case % 14 {
        0 => {
            if let Some(t) = body::<NewToken>(rest) {
                assert_eq!(Role::parse(t.role.name()), Some(t.role));
            }
        }
        1 => {
            let Some(h) = body::<NewHost>(rest) else {
                return;
            };
            let Ok(key) = PublicKey::from_pem(&h.public_key_pem) else {
                return;
            };
            if let Some(tpm) = &h.tpm {
                certify(key.raw(), &tpm.ak, &tpm.certify);
            }
        }
        2 => {
            if let Some(p) = body::<NewPolicy>(rest)
                && let Ok(policy) = Policy::parse(&p.toml, None)
            {
                let _ = policy.id();
            }
        }
        3 => {
            let _ = body::<NewVm>(rest);
        }
        4 => {
            let Some(b) = body::<NewBaseline>(rest) else {
                return;
            };
            for region in &b.regions {
                for page in &region.pages {
                    if let Ok(bytes) = hex::decode(page) {
                        for alg in [HashAlg::Blake3, HashAlg::Sha256, HashAlg::Sha384] {
                            if let Some(d) = Digest::new(alg, &bytes) {
                                let _ = d.as_bytes().len() == alg.digest_len();
                            }
                        }
                    }
                }
            }
        }
        5 => {
            if let Some(r) = body::<NewReferenceConfig>(rest) {
                let _ = Reference::parse(&r.toml);
            }
        }
        6 => {
            let Some(req) = body::<ConfigCheckRequest>(rest) else {
                return;
            };
            let statement = hex::decode(req.statement.trim())
                .ok()
                .and_then(|b| SignedConfigStatement::decode(&b).ok());
            let opening = hex::decode(req.opening.trim())
                .ok()
                .and_then(|b| ConfigOpening::decode(&b).ok());
            if let (Some(s), Some(o)) = (statement, opening) {
                let _ = o.root().ct_eq(&s.value().root) && o.len() == s.value().count as usize;
            }
        }
        7 => {
            let _ = body::<NewSnapshotRequest>(rest);
        }
        9 => {
            let Some(req) = body::<LocateRequest>(rest) else {
                return;
            };
            let got: Vec<Digest> = req
                .digests
                .iter()
                .filter_map(|h| Digest::new(HashAlg::Sha256, &hex::decode(h).ok()?))
                .collect();
            assert!(differing_pages(&got, &got).is_empty());
        }
        10 => {
            let Some(req) = body::<PagesRequest>(rest) else {
                return;
            };
            let want = [0xccu8; PAGE_SIZE];
            let site = PatchSite {
                addr: GuestAddr(0x1010),
                len: 5,
                target: GuestAddr(0x1040),
                kind: vmattest_core::attest::SiteKind::Label,
            };
            for p in &req.pages {
                let Ok(got) = hex::decode(&p.data) else {
                    continue;
                };
                if got.len() <= PAGE_SIZE {
                    let runs = diff_page(0x1000, &got, &want, &[site]);
                    let _ = describe(PageIndex(p.index), &runs);
                }
            }
        }
        11 => {
            let _ = body::<VmPolicy>(rest);
        }
        12 => {
            // A host quote: its hex fields and its event log, replayed per PCR.
            let Some(ev) = body::<HostEvidence>(rest) else {
                return;
            };
            if let Ok(attest) = hex::decode(&ev.attest) {
                let _ = parse_attest(&attest);
            }
            if let Ok(sig) = hex::decode(&ev.signature) {
                let _ = Signature::from_raw(&sig);
            }
            for p in &ev.pcrs {
                let _ = replay(&ev.events, p.index);
            }
        }
        13 => {
            // Host policies, held keys and key release requests.
            let _ = body::<HostPolicy>(rest);
            let _ = body::<VmKey>(rest);
            if let Some(r) = body::<KeyRelease>(rest) {
                let _ = replay(&r.evidence.events, 23);
            }
        }
        _ => {
            // The certify file of `tpm keygen` (`tpm verify-key`), checked for its own key.
            let Some(doc) = body::<CertifyDoc>(rest) else {
                return;
            };
            let Ok([key, ..]) = doc.decode() else { return };
            if let Ok(k) = parse_ecc_public(&key) {
                certify(
                    &k.sec1,
                    &hex::encode(include_bytes!("../seeds/keys/ak.tpmt")),
                    &doc,
                );
            }
        }
    }
});
