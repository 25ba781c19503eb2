//! `vmattest remote host attest|attestations` and `remote host-policy ...`.

use anyhow::{Context as _, bail};
use vmattest_api::host::{EventRule, HostPolicy};
use vmattest_client::Client;
use vmattest_host::{eventlog, quotefile};

use crate::args::RemoteHostPolicyCommand;
use crate::output::{report_all, show};

/// `remote host attest`: a quote of this host over a server nonce, appraised by the server.
pub fn attest(c: &Client, name: &str, pcr: Option<u32>, json: bool) -> anyhow::Result<()> {
    let challenge = c.host_challenge(name)?;
    let nonce = hex::decode(&challenge.nonce)
        .with_context(|| format!("the server's nonce {:?}", challenge.nonce))?;
    let (quote, events) = eventlog::quote_host(pcr, &nonce)?;
    let evidence = quotefile::host_evidence(&nonce, &quote, events);
    let r = c.host_attest(name, &evidence)?;
    show(json, &r, ToString::to_string)
}

/// `N=HEX`.
fn golden(arg: &str) -> anyhow::Result<(u32, String)> {
    let (n, v) = arg
        .split_once('=')
        .with_context(|| format!("--pcr {arg:?}: expected N=HEX"))?;
    let n: u32 = n
        .parse()
        .with_context(|| format!("--pcr {arg:?}: expected a PCR number before '='"))?;
    Ok((n, v.to_ascii_lowercase()))
}

/// `PCR:KIND=VALUE`.
fn rule(arg: &str) -> anyhow::Result<EventRule> {
    let bad = || format!("--event {arg:?}: expected PCR:KIND=VALUE");
    let (pcr, rest) = arg.split_once(':').with_context(bad)?;
    let (kind, value) = rest.split_once('=').with_context(bad)?;
    Ok(EventRule {
        pcr: pcr.parse().with_context(bad)?,
        kind: kind.to_owned(),
        value: value.to_owned(),
    })
}

/// `remote host-policy ...`.
pub fn policy(c: &Client, cmd: RemoteHostPolicyCommand, json: bool) -> anyhow::Result<()> {
    match cmd {
        RemoteHostPolicyCommand::Set {
            group,
            pcrs,
            quote,
            events,
        } => {
            let mut policy = HostPolicy::default();
            if let Some(q) = &quote {
                policy.pcrs = quotefile::listed_pcrs(q)?;
            }
            for p in &pcrs {
                let (n, v) = golden(p)?;
                policy.pcrs.insert(n, v);
            }
            policy.events = events.iter().map(|e| rule(e)).collect::<Result<_, _>>()?;
            if policy.pcrs.is_empty() && policy.events.is_empty() {
                bail!("host policy {group}: give --pcr, --quote or --event");
            }
            let e = c.put_host_policy(&group, &policy)?;
            show(json, &e, |e| {
                format!(
                    "host policy {}: {} PCRs, {} events",
                    e.group,
                    e.policy.pcrs.len(),
                    e.policy.events.len()
                )
            })
        }
        RemoteHostPolicyCommand::List => report_all(json, &c.host_policies()?),
        RemoteHostPolicyCommand::Delete { group } => {
            c.delete_host_policy(&group)?;
            show(json, &serde_json::json!({ "deleted": group }), |_| {
                format!("host policy {group} deleted")
            })
        }
    }
}
