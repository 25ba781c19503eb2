//! `vmattest-fuzz-seedgen WORK OUT`: writes seeds for the `evidence`, `report` and
//! `api_bodies` targets into OUT/<target>/, from what scripts/fuzz-seeds.sh left in WORK
//! (keys, a resolved policy, a config opening and statement, a chain's link and manifest, TPM
//! files). Evidence and reports are built and signed as the agent builds them, request bodies
//! serialized from the API's own types.

use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;
use vmattest_api::{
    CertifyDoc, ConfigCheckRequest, NewBaseline, NewHost, NewPolicy, NewReferenceConfig,
    NewSnapshotRequest, NewToken, NewVm, Provenance, RegionPages, Role, TpmBinding, Webhook,
};
use vmattest_core::alg::PAGE_SIZE;
use vmattest_core::attest::{
    ComponentCheck, Evidence, Policy, RegionDigest, SnapshotReport, page_digest, region_digest,
    sample_pages,
};
use vmattest_core::chain::{Link, Manifest, link_digest};
use vmattest_core::record::{Signable, SignatureEntry, Signed, UnixTime};
use vmattest_sign::keyfile::read_secret_key;
use vmattest_sign::{SecretKey, Signer};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const TIME: UnixTime = UnixTime {
    secs: 1_790_000_000,
    nanos: 123_456_789,
};

fn write(out: &Path, target: &str, name: &str, bytes: &[u8]) -> Result<()> {
    let dir = out.join(target);
    fs::create_dir_all(&dir)?;
    fs::write(dir.join(name), bytes)?;
    Ok(())
}

/// A selector byte, then the body as JSON.
fn body<T: Serialize>(out: &Path, case: u8, name: &str, value: &T) -> Result<()> {
    let mut bytes = vec![case];
    bytes.extend(serde_json::to_vec(value)?);
    write(out, "api_bodies", name, &bytes)
}

fn sign<T: Signable>(value: T, key: &SecretKey) -> Result<Vec<u8>> {
    let mut signed = Signed::new(value)?;
    let signature = key.sign(&signed.message())?;
    signed.signatures.push(SignatureEntry {
        alg: key.alg(),
        key_id: key.key_id(),
        signature,
    });
    Ok(signed.encode()?)
}

/// Deterministic "guest RAM" for the region digests.
fn ram(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 253) as u8).collect()
}

fn evidence(policy: &Policy, subset: &str, nonce: &[u8], key: &SecretKey) -> Result<Evidence> {
    let Some(s) = policy.subset(subset) else {
        return Err(format!("policy has no subset {subset}").into());
    };
    let memory = ram(1 << 20);
    let mut regions = Vec::new();
    let mut kernel_code = None;
    for name in &s.regions {
        let Some(r) = policy.region(name) else {
            return Err(format!("policy has no region {name}").into());
        };
        let page = |i: u64| {
            let at = usize::try_from((r.start.0 + i * PAGE_SIZE as u64) % (1 << 20))
                .unwrap_or(0)
                .min((1 << 20) - PAGE_SIZE);
            page_digest(policy.alg, &memory[at..at + PAGE_SIZE])
        };
        let picked: Vec<_> = sample_pages(nonce, r)
            .into_iter()
            .map(|p| (p, page(p.0)))
            .collect();
        if r.kernel_code {
            let all: Vec<_> = (0..r.pages)
                .map(|i| (vmattest_core::alg::PageIndex(i), page(i)))
                .collect();
            kernel_code = Some(region_digest(policy.alg, &r.name, &all));
        }
        regions.push(RegionDigest {
            name: r.name.clone(),
            pages: r.pages,
            digest: region_digest(policy.alg, &r.name, &picked),
        });
    }
    Ok(Evidence {
        vm: "web1".into(),
        time: TIME,
        nonce: nonce.to_vec(),
        alg: policy.alg,
        policy_id: policy.id(),
        subset: subset.into(),
        regions,
        kernel_code,
        agent_version: "0.1.0".into(),
        key_ids: vec![key.key_id()],
    })
}

fn main() -> Result<()> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [work, out] = args.as_slice() else {
        return Err("usage: vmattest-fuzz-seedgen WORK OUT".into());
    };
    let keys: Vec<(&str, SecretKey)> = ["ed25519", "p384", "ml-dsa-65", "hybrid"]
        .into_iter()
        .map(|alg| Ok((alg, read_secret_key(&work.join("keys").join(alg))?)))
        .collect::<Result<_>>()?;
    let policy_toml = fs::read_to_string(work.join("policy.resolved.toml"))?;
    let policy = Policy::parse(&policy_toml, None)?;

    // Evidence (kind 8) alone and signed by each key: what an agent posts.
    let nonce: Vec<u8> = (0u8..48).collect();
    for (alg, key) in &keys {
        for subset in policy.subsets.iter().map(|s| s.id.as_str()) {
            let e = evidence(&policy, subset, &nonce, key)?;
            if *alg == "ed25519" {
                write(out, "evidence", &format!("evidence-{subset}"), &e.encode()?)?;
            }
            write(
                out,
                "evidence",
                &format!("signed-{alg}-{subset}"),
                &sign(e, key)?,
            )?;
        }
    }

    // Snapshot reports (kind 9) over a real link and its manifest's components.
    let link_bytes = fs::read(work.join("chain.link"))?;
    let link = Signed::<Link>::decode(&link_bytes)?;
    let manifest = Manifest::decode(&fs::read(work.join("chain.manifest"))?)?;
    let checks: Vec<ComponentCheck> = manifest
        .components
        .iter()
        .map(|c| ComponentCheck {
            name: c.name.clone(),
            expected: c.root,
            found: c.root,
        })
        .collect();
    let mut mismatch = checks.clone();
    if let Some(first) = mismatch.first_mut() {
        first.found = first.expected.alg().hash(&[b"other bytes"]);
    }
    for (i, (alg, key)) in keys.iter().enumerate() {
        for (verdict, components) in [("match", &checks), ("mismatch", &mismatch)] {
            let r = SnapshotReport {
                vm: "web1".into(),
                time: TIME,
                nonce: if i % 2 == 0 {
                    nonce[..32].to_vec()
                } else {
                    Vec::new()
                },
                seq: link.value().seq,
                link: link_digest(&link),
                components: components.clone(),
                key_ids: vec![key.key_id()],
            };
            if *alg == "ed25519" {
                write(out, "report", &format!("report-{verdict}"), &r.encode()?)?;
            }
            write(
                out,
                "report",
                &format!("signed-{alg}-{verdict}"),
                &sign(r, key)?,
            )?;
        }
    }

    // API request bodies, one selector byte each (see fuzz_targets/api_bodies.rs).
    body(
        out,
        0,
        "token-admin",
        &NewToken {
            role: Role::Admin,
            host: None,
        },
    )?;
    body(
        out,
        0,
        "token-agent",
        &NewToken {
            role: Role::Agent,
            host: Some("host1".into()),
        },
    )?;
    for (alg, key) in &keys {
        let host = NewHost {
            name: format!("host-{alg}"),
            public_key_pem: key.public_key().to_pem(),
            tpm: None,
        };
        body(out, 1, &format!("host-{alg}"), &host)?;
    }
    let tpm = work.join("tpm");
    if tpm.join("key.pub.certify").exists() {
        let certify: CertifyDoc = serde_json::from_slice(&fs::read(tpm.join("key.pub.certify"))?)?;
        let host = NewHost {
            name: "host-tpm".into(),
            public_key_pem: fs::read_to_string(tpm.join("key.pub"))?,
            tpm: Some(TpmBinding {
                ak: hex::encode(fs::read(tpm.join("ak"))?),
                certify: certify.clone(),
            }),
        };
        body(out, 1, "host-tpm", &host)?;
        body(out, 8, "certify", &certify)?;
    }
    body(
        out,
        2,
        "policy",
        &NewPolicy {
            toml: policy_toml.clone(),
        },
    )?;
    let vm = NewVm {
        name: "web1".into(),
        host: "host1".into(),
        policy_id: policy.id().to_string(),
        approved_subsets: policy.subsets.iter().map(|s| s.id.clone()).collect(),
        threshold: 80,
        webhook: Some(Webhook {
            url: "https://alerts.example/hook".into(),
            secret: "0123456789abcdef0123".into(),
        }),
        on_alert: vmattest_api::AlertAction::Rollback,
    };
    body(out, 3, "vm", &vm)?;
    let memory = ram(1 << 20);
    let baseline = NewBaseline {
        policy_id: policy.id().to_string(),
        regions: policy
            .regions
            .iter()
            .map(|r| RegionPages {
                name: r.name.clone(),
                pages: (0..r.pages.min(8))
                    .map(|i| {
                        let at = usize::try_from(i).unwrap_or(0) * PAGE_SIZE;
                        page_digest(policy.alg, &memory[at..at + PAGE_SIZE]).to_string()
                    })
                    .collect(),
            })
            .collect(),
        provenance: Provenance {
            store_vm_id: "web1".into(),
            seq: link.value().seq.0,
            link_digest: link_digest(&link).to_string(),
            state_root: link.value().state_root.to_string(),
            signer_key_ids: link.value().key_ids.iter().map(|k| k.to_hex()).collect(),
            snapshot_time: link.value().time.secs,
            component: "ram".into(),
        },
    };
    body(out, 4, "baseline", &baseline)?;
    body(
        out,
        5,
        "reference",
        &NewReferenceConfig {
            toml: fs::read_to_string(work.join("reference.toml"))?,
        },
    )?;
    let check = ConfigCheckRequest {
        opening: hex::encode(fs::read(work.join("cfg").join("config.opening"))?),
        statement: hex::encode(fs::read(work.join("cfg").join("config.statement"))?),
    };
    body(out, 6, "config-check", &check)?;
    body(out, 7, "snapshot-request", &NewSnapshotRequest { seq: 2 })?;
    Ok(())
}
