//! `vmattest remote ...`: a thin administrator and auditor client for the attestation server.

use std::path::Path;

use anyhow::bail;
use serde::Serialize;
use vmattest_api::{AlertAction, NewHost, NewPolicy, NewToken, NewVm, Role, Webhook};
use vmattest_client::{Client, Connect};
use vmattest_sign::keyfile;

use super::read_capped;
use super::snapshot::load_verify;
use crate::VerificationFailed;
use crate::args::{
    RemoteArgs, RemoteCommand, RemoteHostCommand, RemotePolicyCommand, RemoteVmCommand,
};
use crate::output;

const MAX_SECRET_FILE: usize = 64 * 1024;

/// Reads a one-line secret (a token, a webhook key), without its trailing newline.
fn read_secret_line(path: &Path, what: &str) -> anyhow::Result<String> {
    let bytes = read_capped(path, MAX_SECRET_FILE, what)?;
    let text = String::from_utf8(bytes)
        .map_err(|_| anyhow::anyhow!("{}: {what} is not UTF-8", path.display()))?;
    let line = text.trim();
    if line.is_empty() || line.contains(['\n', '\r']) {
        bail!("{}: expected a {what} on one line", path.display());
    }
    Ok(line.to_owned())
}

/// Prints one value as JSON, or as `text` otherwise.
fn show<T: Serialize>(
    json: bool,
    value: &T,
    text: impl FnOnce(&T) -> String,
) -> anyhow::Result<()> {
    if json {
        output::print(value)
    } else {
        println!("{}", text(value));
        Ok(())
    }
}

/// Prints each item as one JSON line, or as `text`.
fn show_all<T: Serialize>(
    json: bool,
    items: &[T],
    text: impl Fn(&T) -> String,
) -> anyhow::Result<()> {
    for item in items {
        show(json, item, &text)?;
    }
    Ok(())
}

fn role(name: &str) -> anyhow::Result<Role> {
    Role::parse(name)
        .ok_or_else(|| anyhow::anyhow!("--role {name:?}: expected admin, agent or auditor"))
}

pub fn run(args: RemoteArgs, json: bool) -> anyhow::Result<()> {
    let c = Client::connect(&Connect {
        server: args.conn.server.as_deref(),
        token_file: args.conn.token_file.as_deref(),
        ca_cert: args.conn.ca_cert.as_deref(),
    })?;
    match args.command {
        RemoteCommand::Health => show(json, &c.health()?, |h| {
            format!(
                "{}: {} (version {}, database {})",
                c.base(),
                h.status,
                h.version,
                h.database
            )
        }),
        RemoteCommand::Token { role: r, host } => {
            let issued = c.create_token(&NewToken {
                role: role(&r)?,
                host,
            })?;
            // The token alone on stdout, so that it can be redirected into a token file.
            show(json, &issued, |t| t.token.clone())
        }
        RemoteCommand::Tokens => show_all(json, &c.tokens()?, token_line),
        RemoteCommand::RevokeToken { id } => {
            let t = c.revoke_token(&id)?;
            show(json, &t, |t| format!("revoked {}", token_line(t)))
        }
        RemoteCommand::Host(RemoteHostCommand::Add {
            name,
            pubkey,
            ak,
            certify,
        }) => {
            let key = keyfile::read_public_key(&pubkey)?;
            let tpm = match ak {
                Some(ak) => Some(tpm_binding(&pubkey, &ak, certify.as_deref())?),
                None => None,
            };
            let host = c.add_host(&NewHost {
                name,
                public_key_pem: key.to_pem(),
                tpm,
            })?;
            show(json, &host, |h| {
                format!("host {} registered, key {}", h.name, h.key_id)
            })
        }
        RemoteCommand::Host(RemoteHostCommand::List) => show_all(json, &c.hosts()?, |h| {
            format!(
                "{}  key {}{}",
                h.name,
                h.key_id,
                if h.tpm_backed { "  (TPM)" } else { "" }
            )
        }),
        RemoteCommand::Policy(RemotePolicyCommand::Add { policy }) => {
            // Checked here first, so that a policy with symbols is refused with a clear error.
            let p = super::policy::load_resolved(&policy)?;
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
        RemoteCommand::Policy(RemotePolicyCommand::Show { id }) => {
            show(json, &c.policy(&id)?, |i| {
                format!("# policy {} ({})\n{}", i.name, i.id, i.toml.trim_end())
            })
        }
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
                    secret: read_secret_line(&file, "webhook secret")?,
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
        RemoteCommand::Vm(RemoteVmCommand::Show { name }) => show(json, &c.vm(&name)?, |v| {
            format!(
                "vm {} on host {}\n  policy {}\n  subsets {}\n  threshold {}, on alert {:?}, webhook {}\n  baseline {}",
                v.name,
                v.host,
                v.policy_id,
                v.approved_subsets.join(", "),
                v.threshold,
                v.on_alert,
                if v.has_webhook { "yes" } else { "no" },
                v.baseline.as_ref().map_or_else(
                    || "none".to_owned(),
                    |b| format!(
                        "{} from {} seq {} (link {})",
                        b.id, b.provenance.store_vm_id, b.provenance.seq, b.provenance.link_digest
                    )
                )
            )
        }),
        RemoteCommand::Baseline {
            vm,
            store,
            verify,
            seq,
            policy,
            component,
        } => {
            let policy = super::policy::load_resolved(&policy)?;
            let (keys, secret) = load_verify(&verify)?;
            let baseline = vmattest_agent::baseline_from_store(
                &store.store,
                seq,
                &keys,
                secret.as_ref(),
                &policy,
                &component,
            )
            .map_err(|e| {
                if e.is_verification() {
                    VerificationFailed(e.to_string()).into()
                } else {
                    anyhow::Error::new(e)
                }
            })?;
            let info = c.set_baseline(&vm, &baseline)?;
            show(json, &info, |b| {
                format!(
                    "baseline {} for {vm}: policy {}, {} region(s) from {} seq {} (link {})",
                    b.id,
                    b.policy_id,
                    baseline.regions.len(),
                    b.provenance.store_vm_id,
                    b.provenance.seq,
                    b.provenance.link_digest
                )
            })
        }
        RemoteCommand::Results { vm, limit } => show_all(json, &c.results(&vm, limit)?, |r| {
            format!(
                "{}  {}  {}  score {:>3} ({}){}",
                r.id,
                r.time,
                r.vm,
                r.score,
                r.status,
                if r.alert { "  ALERT" } else { "" }
            )
        }),
        RemoteCommand::Alerts { vm } => show_all(json, &c.alerts(vm.as_deref())?, |a| {
            format!(
                "{}  {}  {}  score {:>3} ({})  result {}  webhook {}: {}",
                a.id,
                a.time,
                a.vm,
                a.score,
                a.status,
                a.result_id,
                if a.webhook_delivered {
                    "delivered"
                } else {
                    "not delivered"
                },
                a.message
            )
        }),
        RemoteCommand::Reports { vm } => show_all(json, &c.reports(&vm)?, |r| {
            format!(
                "{}  {}  {}  seq {}  {}",
                r.id, r.time, r.vm, r.seq, r.verdict
            )
        }),
        RemoteCommand::AttestSnapshot { vm, seq } => {
            show(json, &c.request_snapshot(&vm, seq)?, |r| {
                format!(
                    "request {}: the agent of {} will compare the running VM with seq {} (nonce {})",
                    r.id, r.vm, r.seq, r.nonce
                )
            })
        }
        RemoteCommand::SnapshotRequests { vm } => show_all(json, &c.snapshot_requests(&vm)?, |r| {
            format!(
                "{}  {}  seq {}  {}",
                r.id,
                r.requested,
                r.seq,
                r.report_id
                    .map_or_else(|| "pending".to_string(), |id| format!("report {id}"))
            )
        }),
        RemoteCommand::EarKey => show(json, &c.ear_key()?, |k| {
            format!("# {} key {}\n{}", k.alg, k.kid, k.public_key_pem.trim_end())
        }),
    }
}

/// The AK and the key's certification, as `tpm ak` and `tpm keygen` wrote them.
fn tpm_binding(
    pubkey: &Path,
    ak: &Path,
    certify: Option<&Path>,
) -> anyhow::Result<vmattest_api::TpmBinding> {
    let default = super::tpm::certify_path(pubkey);
    let certify = certify.unwrap_or(&default);
    let ak_bytes = read_capped(ak, 4096, "attestation key")?;
    let text = read_capped(certify, 1 << 20, "certification")?;
    let doc: vmattest_api::CertifyDoc = serde_json::from_slice(&text)
        .map_err(|e| anyhow::anyhow!("certification {}: {e}", certify.display()))?;
    Ok(vmattest_api::TpmBinding {
        ak: hex::encode(ak_bytes),
        certify: doc,
    })
}

fn token_line(t: &vmattest_api::TokenInfo) -> String {
    match &t.host {
        Some(h) => format!("{} {} host {h} created {}", t.id, t.role.name(), t.created),
        None => format!("{} {} created {}", t.id, t.role.name(), t.created),
    }
}
