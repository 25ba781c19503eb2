//! `vmattest remote ...`: a thin administrator and auditor client for the attestation server.

use anyhow::bail;
use vmattest_api::{AlertAction, NewHost, NewPolicy, NewToken, NewVm, Role, Webhook};
use vmattest_host::{files, keys, quotefile, tpm};

use super::{connect_user, verifier};
use crate::args::{
    RemoteArgs, RemoteCommand, RemoteHostCommand, RemotePolicyCommand, RemoteVmCommand,
};
use crate::output::{report, report_all, show};

fn role(name: &str) -> anyhow::Result<Role> {
    Role::parse(name)
        .ok_or_else(|| anyhow::anyhow!("--role {name:?}: expected admin, agent or auditor"))
}

pub fn run(args: RemoteArgs, json: bool) -> anyhow::Result<()> {
    let public = matches!(
        args.command,
        RemoteCommand::Health | RemoteCommand::EarKey | RemoteCommand::Jwks
    );
    let c = connect_user(args.conn, !public)?;
    match args.command {
        RemoteCommand::Health => show(json, &c.health()?, |h| format!("{}: {h}", c.base())),
        RemoteCommand::Token { role: r, host, out } => {
            let what = "token file";
            // Checked before the token is issued, so that no token is made and then lost.
            if let Some(path) = &out {
                files::ensure_absent(path, what)?;
            }
            let issued = c.create_token(&NewToken {
                role: role(&r)?,
                host,
            })?;
            match out {
                Some(path) => {
                    files::write_private(&path, format!("{}\n", issued.token).as_bytes(), what)?;
                    let written = serde_json::json!({
                        "id": issued.id,
                        "role": issued.role,
                        "host": issued.host,
                        "file": path,
                    });
                    show(json, &written, |_| {
                        format!("token {} written to {}", issued.id, path.display())
                    })
                }
                // The token alone on stdout, so that it can be redirected into a token file.
                None => show(json, &issued, |t| t.token.clone()),
            }
        }
        RemoteCommand::Tokens => report_all(json, &c.tokens()?),
        RemoteCommand::RevokeToken { id } => {
            show(json, &c.revoke_token(&id)?, |t| format!("revoked {t}"))
        }
        RemoteCommand::Host(RemoteHostCommand::Add {
            name,
            pubkey,
            ak,
            certify,
            group,
        }) => {
            let key = keys::read_public(&pubkey)?;
            let tpm = match ak {
                Some(ak) => {
                    let certify = certify.unwrap_or_else(|| tpm::certify_path(&pubkey));
                    Some(quotefile::tpm_binding(&ak, &certify)?)
                }
                None => None,
            };
            let host = c.add_host(&NewHost {
                name,
                public_key_pem: key.to_pem(),
                tpm,
                group,
            })?;
            show(json, &host, |h| {
                format!("host {} registered, key {}", h.name, h.key_id)
            })
        }
        RemoteCommand::Host(RemoteHostCommand::List) => report_all(json, &c.hosts()?),
        RemoteCommand::Host(RemoteHostCommand::Attest { name, pcr }) => {
            super::hostattest::attest(&c, &name, pcr, json)
        }
        RemoteCommand::Host(RemoteHostCommand::Attestations { name }) => {
            report_all(json, &c.host_attestations(&name)?)
        }
        RemoteCommand::HostPolicy(cmd) => super::hostattest::policy(&c, cmd, json),
        RemoteCommand::Policy(RemotePolicyCommand::Add { policy }) => {
            // Checked here first, so that a policy with symbols is refused with a clear error.
            let p = vmattest_host::policy::load(&policy, None)?;
            let info = c.add_policy(&NewPolicy { toml: p.to_toml() })?;
            if info.id != p.id().to_hex() {
                bail!(
                    "the server registered policy {} as id {}, expected {}",
                    info.name,
                    info.id,
                    p.id().to_hex()
                );
            }
            show(json, &info, |i| {
                format!("policy {} registered as {}", i.name, i.id)
            })
        }
        RemoteCommand::Policy(RemotePolicyCommand::Show { id }) => report(json, &c.policy(&id)?),
        RemoteCommand::Vm(RemoteVmCommand::Add {
            name,
            host,
            policy_id,
            subsets,
            threshold,
            webhook_url,
            webhook_secret_file,
            on_alert,
        }) => {
            if threshold > 100 {
                bail!("--threshold {threshold}: expected 0 to 100");
            }
            let webhook = match (webhook_url, webhook_secret_file) {
                (Some(url), Some(file)) => Some(Webhook {
                    url,
                    secret: files::read_secret_line(&file, "webhook secret")?,
                }),
                _ => None,
            };
            let vm = c.add_vm(&NewVm {
                name,
                host,
                policy_id,
                approved_subsets: subsets,
                threshold,
                webhook,
                on_alert: if on_alert == "rollback" {
                    AlertAction::Rollback
                } else {
                    AlertAction::None
                },
            })?;
            show(json, &vm, |v| {
                format!("vm {} registered on host {}", v.name, v.host)
            })
        }
        RemoteCommand::Vm(RemoteVmCommand::Show { name }) => report(json, &c.vm(&name)?),
        RemoteCommand::Vm(RemoteVmCommand::PutKey {
            name,
            secret,
            release_to,
        }) => {
            let held = vmattest_host::release::put_key(&c, &name, &secret, release_to)?;
            show(json, &held, |h| {
                format!(
                    "the key of VM {} is held for release to its host{}",
                    h.vm,
                    if h.release_to.is_empty() {
                        String::new()
                    } else {
                        format!(" and {}", h.release_to.join(", "))
                    }
                )
            })
        }
        RemoteCommand::Vm(RemoteVmCommand::ReleaseKey {
            name,
            host,
            out,
            pcr,
            seal_pcr,
        }) => {
            let pcrs = tpm::pcr_list(&seal_pcr)?;
            let r = vmattest_host::release::release_key(&c, &name, &host, pcr, &pcrs, &out)?;
            show(json, &r, |r| {
                format!(
                    "the key of VM {} was released to host {} and sealed to its PCRs {:?} -> {}",
                    r.vm, r.host, r.sealed_to, r.out
                )
            })
        }
        RemoteCommand::Vm(RemoteVmCommand::SetPolicy {
            name,
            policy_id,
            subsets,
        }) => {
            let vm = c.set_vm_policy(
                &name,
                &vmattest_api::VmPolicy {
                    policy_id,
                    approved_subsets: (!subsets.is_empty()).then_some(subsets),
                },
            )?;
            show(json, &vm, |v| match &v.baseline {
                Some(b) => format!(
                    "vm {} moved to policy {}; baseline {} (seq {})",
                    v.name, v.policy_id, b.id, b.provenance.seq
                ),
                None => format!(
                    "vm {} moved to policy {}; it has no baseline for it yet: evidence is refused until `remote baseline` stores one",
                    v.name, v.policy_id
                ),
            })
        }
        RemoteCommand::Baseline {
            vm,
            store,
            verify,
            seq,
            policy,
            component,
        } => {
            let policy = vmattest_host::policy::load(&policy, None)?;
            let v = verifier(&verify)?;
            let golden = vmattest_agent::baseline_from_store(
                &store.store,
                seq,
                v.pinned(),
                v.secret(),
                &policy,
                &component,
            )?;
            let info = c.set_baseline(&vm, &golden.request)?;
            for (region, zstd) in &golden.bytes {
                c.put_baseline_bytes(&vm, info.id, region, zstd)?;
            }
            show(json, &info, |b| {
                format!(
                    "baseline {} for {vm}: policy {}, {} region(s) from {} seq {} (link {})",
                    b.id,
                    b.policy_id,
                    golden.request.regions.len(),
                    b.provenance.store_vm_id,
                    b.provenance.seq,
                    b.provenance.link_digest
                )
            })
        }
        RemoteCommand::Results { vm, limit } => report_all(json, &c.results(&vm, limit)?),
        RemoteCommand::Alerts { vm, all } => report_all(json, &c.alerts(vm.as_deref(), all)?),
        RemoteCommand::AckAlert { id } => report(json, &c.ack_alert(id)?),
        RemoteCommand::Reports { vm } => report_all(json, &c.reports(&vm)?),
        RemoteCommand::AttestSnapshot { vm, seq } => {
            show(json, &c.request_snapshot(&vm, seq)?, |r| {
                format!(
                    "request {}: the agent of {} will compare the running VM with seq {} (nonce {})",
                    r.id, r.vm, r.seq, r.nonce
                )
            })
        }
        RemoteCommand::SnapshotRequests { vm } => report_all(json, &c.snapshot_requests(&vm)?),
        RemoteCommand::EarKey => report(json, &c.ear_key()?),
        RemoteCommand::Jwks => {
            let jwks = c.jwks()?;
            show(json, &jwks, |j| {
                serde_json::to_string_pretty(j).unwrap_or_default()
            })
        }
        RemoteCommand::RotateEarKey { alg } => {
            show(json, &c.rotate_ear_key(alg.as_deref())?, |k| {
                format!("EAR key rotated: now {} ({})", k.kid, k.alg)
            })
        }
    }
}
