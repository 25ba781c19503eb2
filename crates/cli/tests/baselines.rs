//! Golden baselines at a real server process: their patch sites, the bytes they keep for
//! naming a difference by page and offset (and the agent's exchange that does), and a VM
//! moving to another policy with a baseline staged for it. Guest RAM is a plain file here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;

use common::fixture::{evidence_for, flip_code_byte, setup};
use common::server::{Server, http, verify_jwt};
use vmattest_api::{AttestationResult, ErrorCode};

/// A baseline's patch sites: refused without a jump table (or static calls) in the policy, and
/// with them refused when a length, a kind, a place or the order is wrong or sites overlap;
/// accepted when all are right.
#[test]
fn baseline_patch_sites_are_checked() {
    /// `[address, length or kind, target or key]`, as the API takes sites.
    type Site = (u64, u8, u64);
    use vmattest_api::{NewBaseline, NewPolicy, NewVm, RegionPages};
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("state"), None);
    let f = setup(&server);
    let zero = "00".repeat(32);
    let baseline = |policy: &vmattest_core::attest::Policy,
                    (sites, calls): (Vec<Site>, Vec<Site>)| NewBaseline {
        policy_id: policy.id().to_hex(),
        regions: policy
            .regions
            .iter()
            .map(|r| RegionPages {
                name: r.name.clone(),
                pages: vec![zero.clone(); usize::try_from(r.pages).unwrap()],
            })
            .collect(),
        patch_sites: sites,
        call_sites: calls,
        provenance: vmattest_api::Provenance {
            store_vm_id: "vm".into(),
            seq: 0,
            link_digest: zero.clone(),
            state_root: zero.clone(),
            signer_key_ids: vec![],
            snapshot_time: vmattest_api::time::from_secs(1),
            component: "ram".into(),
        },
    };
    let e = f
        .admin
        .set_baseline(
            "vm1",
            &baseline(&f.policy, (vec![(0x100, 5, 0x200)], vec![])),
        )
        .unwrap_err();
    assert!(e.to_string().contains("no jump_table"), "{e}");
    let e = f
        .admin
        .set_baseline(
            "vm1",
            &baseline(&f.policy, (vec![], vec![(0x100, 1, 0x200)])),
        )
        .unwrap_err();
    assert!(e.to_string().contains("no static_calls"), "{e}");

    let toml = "name = \"jt\"\n[jump_table]\nstart = 0x9000\nlen = 0x100\n[static_calls]\nsites_start = 0xa000\nsites_len = 0x80\ntrampolines_start = 0x2f00\ntrampolines_len = 0x10\n[[region]]\nname = \"text\"\nstart = 0x1000\nlen = 0x2000\nkernel_code = true\n";
    let policy = vmattest_core::attest::Policy::parse(toml, None).unwrap();
    let p = f
        .admin
        .add_policy(&NewPolicy {
            toml: policy.to_toml(),
        })
        .unwrap();
    assert_eq!(p.id, policy.id().to_hex());
    f.admin
        .add_vm(&NewVm {
            name: "vm2".into(),
            host: "host1".into(),
            policy_id: p.id,
            approved_subsets: vec!["all".into()],
            threshold: 90,
            webhook: None,
            on_alert: Default::default(),
        })
        .unwrap();
    let calls = |c: Vec<(u64, u8, u64)>| (vec![(0x1100, 5, 0x1200)], c);
    for (sites, needle) in [
        (
            (vec![(0x1100, 3, 0x1200)], vec![]),
            "patch_sites[0]: expected a length of 2 or 5",
        ),
        (
            (vec![(0x100, 5, 0x200)], vec![]),
            "patch_sites[0]: expected a site within a region",
        ),
        (
            (vec![(0x1100, 5, 0x1200), (0x1102, 2, 0x1200)], vec![]),
            "patch_sites[1]: expected sites sorted and apart",
        ),
        (
            calls(vec![(0x1200, 7, 0xa100)]),
            "call_sites[0]: expected kind 1, 2 or 3, found 7",
        ),
        (
            calls(vec![(0x1200, 1, 0xa100), (0x100, 1, 0xa100)]),
            "call_sites[1]: expected a site within a region",
        ),
        (
            calls(vec![(0x1300, 1, 0xa100), (0x1200, 2, 0xa100)]),
            "call_sites[1]: expected sites sorted and apart",
        ),
        (
            calls(vec![(0x1102, 1, 0xa100)]),
            "expected sites apart, found 0x1100 and 0x1102",
        ),
    ] {
        let e = f
            .admin
            .set_baseline("vm2", &baseline(&policy, sites))
            .unwrap_err();
        assert_eq!(e.code(), Some(&ErrorCode::Regions), "{e}");
        assert!(e.to_string().contains(needle), "{needle}: {e}");
    }
    f.admin
        .set_baseline(
            "vm2",
            &baseline(
                &policy,
                (
                    vec![(0x1100, 5, 0x1200), (0x2ffe, 2, 0x1000)],
                    vec![(0x1200, 1, 0xa100), (0x1300, 2, 0xa100), (0x2f00, 3, 0)],
                ),
            ),
        )
        .unwrap();
    named_by_fingerprint(&f, &policy);
}

/// Once a whole site report passed, the challenge names its fingerprint and evidence may name
/// the report by it; any other fingerprint is refused with `unknown_site_report`.
fn named_by_fingerprint(f: &common::fixture::Fixture, policy: &vmattest_core::attest::Policy) {
    use vmattest_core::alg::{HashAlg, PageIndex};
    use vmattest_core::attest::{
        Evidence, GuestAddr, PatchSite, RegionDigest, SiteEvidence, SiteKind, SiteState, patch,
        region_digest,
    };
    let site = |addr, len, target, kind| PatchSite {
        addr: GuestAddr(addr),
        len,
        target: GuestAddr(target),
        kind,
    };
    let sites = [
        site(0x1100, 5, 0x1200, SiteKind::Label),
        site(0x1200, 5, 0xa100, SiteKind::Call),
        site(0x1300, 5, 0xa100, SiteKind::Tail),
        site(0x2f00, 5, 0, SiteKind::Trampoline),
        site(0x2ffe, 2, 0x1000, SiteKind::Label),
    ];
    let read: Vec<Vec<u8>> = sites
        .iter()
        .map(|s| {
            let st = match s.kind {
                SiteKind::Label => SiteState::Nop,
                SiteKind::Call => SiteState::Call,
                _ => SiteState::Jump,
            };
            s.encoding_to(st, 0x1800).unwrap()[..usize::from(s.len)].to_vec()
        })
        .collect();
    let report = patch::report(policy.alg, &sites, &read);
    assert_eq!(
        patch::check_report(policy.alg, &sites, &report, policy.text()),
        Ok(())
    );
    let zero = policy.alg.zero_digest();
    let digest = region_digest(
        policy.alg,
        "text",
        &[(PageIndex(0), zero), (PageIndex(1), zero)],
    );
    let submit = |sites: SiteEvidence| {
        let c = f.agent.challenge("vm2").unwrap();
        let ev = Evidence {
            vm: "vm2".into(),
            time: vmattest_host::now(),
            nonce: hex::decode(&c.nonce).unwrap(),
            alg: policy.alg,
            policy_id: policy.id(),
            subset: "all".into(),
            regions: vec![RegionDigest {
                name: "text".into(),
                pages: 2,
                digest,
                sites: Some(sites),
            }],
            kernel_code: Some(digest),
            kernel_code_sites: None,
            agent_version: "test".into(),
            key_ids: vec![vmattest_sign::Signer::key_id(&f.host_key)],
        };
        let signed = vmattest_agent::evidence::sign(ev, &f.host_key).unwrap();
        (c, f.agent.evidence(&signed.encode().unwrap()))
    };
    let (c, r) = submit(SiteEvidence::Whole(report.clone()));
    assert_eq!(c.site_report, None);
    assert_eq!(r.unwrap().status, "affirming");
    let print = report.fingerprint();
    let (c, r) = submit(SiteEvidence::Same(print));
    assert_eq!(c.site_report, Some(print.to_hex()));
    assert_eq!(r.unwrap().status, "affirming");
    let other = HashAlg::Blake3.hash(&[b"another report"]);
    let (_, r) = submit(SiteEvidence::Same(other));
    let e = common::fixture::refused(r, ErrorCode::UnknownSiteReport);
    assert!(
        e.contains("which is not the last that passed for VM vm2"),
        "{e}"
    );
}

/// A kernel-code byte changed: the agent's follow-up names its page, offset and both values
/// in the result and the alert; misuse of the exchange and bad baseline bytes are refused.
#[test]
fn a_difference_is_named_by_page_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    difference_named(&Server::start(&dir.path().join("state"), None));
}

/// The same on PostgreSQL: its schema 5 and the statements of the exchange.
#[test]
fn a_difference_is_named_by_page_and_offset_on_postgres() {
    let pg = vmattest_testkit::Postgres::start()
        .expect("PostgreSQL (scripts/install-deps.sh installs it)");
    let dir = tempfile::tempdir().unwrap();
    difference_named(&Server::start(&dir.path().join("state"), Some(&pg.url())));
}

fn difference_named(server: &Server) {
    use vmattest_api::{LocateRequest, PageBytes, PagesRequest};
    let f = setup(server);
    let clean = f.agent.evidence(&evidence_for(&f, &f.host_key)).unwrap();
    let e = f
        .agent
        .locate(
            clean.id,
            &LocateRequest {
                region: "code".into(),
                digests: vec![],
            },
        )
        .unwrap_err();
    assert_eq!(e.code(), Some(&ErrorCode::Invalid), "{e}");
    assert!(e.to_string().contains("matched the baseline"), "{e}");

    let before = std::fs::read(&f.ram).unwrap()[3 * 4096 + 100];
    flip_code_byte(&f.ram);
    let r = f.agent.evidence(&evidence_for(&f, &f.host_key)).unwrap();
    assert!(r.alert, "{r:?}");
    let ram = std::fs::read(&f.ram).unwrap();
    let located = vmattest_agent::locate::locate(&f.agent, &ram, &f.policy, &r)
        .unwrap()
        .expect("a page differs");
    let want = format!(
        "page 3 offset 0x64: holds {:02x}, baseline {before:02x}",
        before ^ 0x5a
    );
    let detail = |res: &AttestationResult| {
        res.regions
            .iter()
            .find(|x| x.name == "code")
            .and_then(|x| x.detail.clone())
            .unwrap_or_default()
    };
    assert!(detail(&located).contains(&want), "{located:?}");
    // Stored with the result, and added to the alert the result raised.
    assert!(detail(&f.auditor.result(r.id).unwrap()).contains(&want));
    let alert = &f.auditor.alerts(Some("vm1"), false).unwrap()[0];
    assert!(alert.message.contains(&want), "{}", alert.message);

    // A region is located once; pages are bounded, in range and hex.
    let page = |index: u64, data: &str| PageBytes {
        index,
        data: data.into(),
    };
    let pages = |v: Vec<PageBytes>| PagesRequest {
        region: "code".into(),
        pages: v,
    };
    let e = f
        .agent
        .page_diff(r.id, &pages(vec![page(3, "00")]))
        .unwrap_err();
    assert!(e.to_string().contains("already located"), "{e}");
    let r2 = f.agent.evidence(&evidence_for(&f, &f.host_key)).unwrap();
    for (req, code, needle) in [
        (pages(vec![]), ErrorCode::Regions, "expected 1 to 16 pages"),
        (
            pages((0..17).map(|i| page(i, "00")).collect()),
            ErrorCode::Regions,
            "found 17",
        ),
        (
            pages(vec![page(8, "00")]),
            ErrorCode::Malformed,
            "index 8 of 8",
        ),
        (pages(vec![page(1, "zz")]), ErrorCode::Malformed, "page 1"),
        (
            pages(vec![page(1, &"00".repeat(4097))]),
            ErrorCode::Malformed,
            "4097 bytes",
        ),
    ] {
        let e = f.agent.page_diff(r2.id, &req).unwrap_err();
        assert_eq!(e.code(), Some(&code), "{needle}: {e}");
        assert!(e.to_string().contains(needle), "{needle}: {e}");
    }
    let e = f
        .agent
        .locate(
            r2.id,
            &LocateRequest {
                region: "code".into(),
                digests: vec!["00".into(); 3],
            },
        )
        .unwrap_err();
    assert!(e.to_string().contains("3 page digests, expected 8"), "{e}");
    // Only an agent calls it.
    let (status, body) = http(
        "POST",
        &format!("{}/v1/results/{}/locate", server.url(), r2.id),
        Some(&f.auditor_token),
        Some(("application/json", b"{}".to_vec())),
    );
    assert_eq!(status, 403, "{body}");

    // Baseline bytes must be the baseline's, of the current baseline, and not a zstd bomb.
    let base_id = f.admin.vm("vm1").unwrap().baseline.unwrap().id;
    let put = |id: i64, body: &[u8]| f.admin.put_baseline_bytes("vm1", id, "code", body);
    let e = put(base_id, &zstd::encode_all(&ram[..0x8000], 3).unwrap()).unwrap_err();
    assert!(
        e.to_string()
            .contains("code page 3: the bytes do not hash to the baseline's page digest"),
        "{e}"
    );
    let e = put(base_id + 1, &zstd::encode_all(&ram[..0x8000], 3).unwrap()).unwrap_err();
    assert_eq!(e.code(), Some(&ErrorCode::NotFound), "{e}");
    assert!(e.to_string().contains("VM vm1 has no baseline"), "{e}");
    let e = put(
        base_id,
        &zstd::encode_all(&vec![0u8; 1 << 20][..], 19).unwrap(),
    )
    .unwrap_err();
    assert_eq!(e.code(), Some(&ErrorCode::Malformed), "{e}");
    assert!(e.to_string().contains("more than 32768 bytes"), "{e}");
    let e = put(base_id, &zstd::encode_all(&ram[..0x1000], 3).unwrap()).unwrap_err();
    assert!(
        e.to_string().contains("4096 bytes, expected 28673..=32768"),
        "{e}"
    );
}

/// A VM moves to another policy without a gap: its baseline for the new policy is staged
/// first (the old one keeps attesting), the move switches both at once, and moving back finds
/// the old baseline again. Unknown policies and subsets are refused.
#[test]
fn a_vm_moves_to_another_policy_with_a_staged_baseline() {
    use vmattest_api::NewPolicy;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("state"), None);
    let f = setup(&server);
    let old = f.admin.vm("vm1").unwrap();
    let toml = common::fixture::POLICY.replace("file-guest", "file-guest-2");
    let next = vmattest_core::attest::Policy::parse(&toml, None).unwrap();
    let p = f
        .admin
        .add_policy(&NewPolicy {
            toml: next.to_toml(),
        })
        .unwrap();
    let next_file = f.dir.join("next.toml");
    std::fs::write(&next_file, next.to_toml()).unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let staged = server
        .remote(
            &f.admin_token,
            &[
                "--json",
                "baseline",
                "--vm",
                "vm1",
                "--store",
                &s(&f.dir.join("store")),
                "--seq",
                "0",
                "--policy",
                &s(&next_file),
                "--pubkey",
                &s(&f.dir.join("chain.key.pub")),
            ],
        )
        .ok()
        .json();
    assert_eq!(staged["policy_id"], p.id.as_str());
    // Staged: the VM still attests under its policy and baseline.
    let r = f.agent.evidence(&evidence_for(&f, &f.host_key)).unwrap();
    assert_eq!(r.status, "affirming", "{r:?}");
    assert_eq!(
        f.admin.vm("vm1").unwrap().baseline.unwrap().id,
        old.baseline.as_ref().unwrap().id
    );

    let set_policy = |more: &[&str]| {
        let mut args = vec!["--json", "vm", "set-policy", "--name", "vm1"];
        args.extend_from_slice(more);
        server.remote(&f.admin_token, &args)
    };
    let move_to = |id: &str| set_policy(&["--policy-id", id]).ok().json();
    let moved = move_to(&p.id);
    assert_eq!(moved["policy_id"], p.id.as_str());
    assert_eq!(moved["baseline"]["id"], staged["id"]);
    let c = f.agent.challenge("vm1").unwrap();
    assert_eq!(c.policy_id, p.id);
    let r = f.agent.evidence(&evidence_for(&f, &f.host_key)).unwrap();
    assert_eq!(r.status, "affirming", "{r:?}");
    let claims = verify_jwt(&server, &r.ear);
    assert_eq!(
        claims["submods"]["vm1"]["ear.appraisal-policy-id"],
        format!("vmattest:policy:{}", p.id)
    );

    // Back again: the old baseline is the newest for the old policy.
    let back = move_to(&old.policy_id);
    assert_eq!(back["baseline"]["id"], old.baseline.as_ref().unwrap().id);
    set_policy(&["--policy-id", &"ab".repeat(32)]).fails(2, "policy");
    set_policy(&["--policy-id", &p.id, "--subset", "nope"]).fails(2, "has no subset \"nope\"");
    let (status, body) = http(
        "PUT",
        &format!("{}/v1/vms/vm1/policy", server.url()),
        Some(&f.agent_token),
        Some((
            "application/json",
            format!("{{\"policy_id\":\"{}\"}}", p.id).into_bytes(),
        )),
    );
    assert_eq!(status, 403, "{body}");
    assert_eq!(f.admin.vm("vm1").unwrap().policy_id, old.policy_id);
}
