//! `vmattest agent` (answer the server's challenges for a VM) and `vmattest attest snapshot`
//! (compare a running VM with an attested snapshot).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::bail;
use serde::Serialize;
use vmattest_agent::report::ChainCheck;
use vmattest_agent::run::{Event, LoopOptions, Rollback, run_loop};
use vmattest_agent::{ReportError, RunError};
use vmattest_api::AttestationResult;
use vmattest_client::{Client, Connect};
use vmattest_core::record::MAX_NONCE_LEN;

use super::snapshot::load_verify;
use super::vm::load_spec;
use super::{parse_hex, write_atomic};
use crate::VerificationFailed;
use crate::args::{AgentArgs, AttestCommand, VerifyArgs};
use crate::output;

#[derive(Debug, Serialize)]
struct RoundJson<'a> {
    round: u64,
    #[serde(flatten)]
    result: &'a AttestationResult,
}

fn print_result(round: u64, r: &AttestationResult, json: bool) -> anyhow::Result<()> {
    if json {
        return output::print(&RoundJson { round, result: r });
    }
    let matched = r.regions.iter().filter(|x| x.matched).count();
    let failed: Vec<&str> = r
        .regions
        .iter()
        .filter(|x| !x.matched)
        .map(|x| x.name.as_str())
        .collect();
    println!(
        "{} round {round}: score {} ({}), {matched}/{} region(s) matched{}{}, result {}",
        r.vm,
        r.score,
        r.status,
        r.regions.len(),
        if failed.is_empty() {
            String::new()
        } else {
            format!(" (differ: {})", failed.join(", "))
        },
        if r.alert { ", ALERT" } else { "" },
        r.id
    );
    Ok(())
}

fn run_err(e: RunError) -> anyhow::Error {
    match &e {
        RunError::Rollback { source, .. } if source.is_verification() => {
            VerificationFailed(e.to_string()).into()
        }
        _ => anyhow::Error::new(e),
    }
}

/// `vmattest agent`.
pub fn run(args: AgentArgs, json: bool) -> anyhow::Result<()> {
    let spec = load_spec(&args.vm.vm)?;
    let name = args.name.clone().unwrap_or_else(|| spec.name().to_owned());
    let client = Client::connect(&Connect {
        server: Some(&args.server),
        token_file: Some(&args.token_file),
        ca_cert: args.ca_cert.as_deref(),
    })?;
    let signer = super::keys::evidence_signer(&args.signer)?;
    let verify = VerifyArgs {
        pubkeys: args.pubkeys.clone(),
        secret: args.secret.clone(),
    };
    let (keys, secret) = if args.store.is_some() {
        load_verify(&verify)?
    } else {
        (Vec::new(), None)
    };
    let rollback = args.store.as_deref().map(|store| Rollback {
        store,
        keys: &keys,
        secret: secret.as_ref(),
    });
    let count = if args.once { Some(1) } else { args.count };
    if count == Some(0) {
        bail!("--count 0: expected at least one round");
    }
    if args.interval == Some(0) {
        bail!("--interval 0: expected at least 1 second");
    }
    let opts = LoopOptions {
        vm_name: &name,
        paused: args.paused,
        interval: args.interval.map(Duration::from_secs),
        count,
        rollback,
    };
    let stop = Arc::new(AtomicBool::new(false));
    if !args.once {
        let flag = Arc::clone(&stop);
        ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
            .map_err(|e| anyhow::anyhow!("installing the SIGTERM/SIGINT handler: {e}"))?;
    }
    let mut last_error: Option<RunError> = None;
    let mut alert = false;
    let mut print_failed: Option<anyhow::Error> = None;
    run_loop(
        &client,
        &spec,
        signer.as_ref(),
        &opts,
        &stop,
        &mut |event| {
            let printed = match event {
                Event::Answered { round, result } => {
                    alert = result.alert;
                    last_error = None;
                    print_result(round, &result, json)
                }
                Event::RolledBack { round, seq, report } => {
                    if json {
                        output::print(&serde_json::json!({
                            "round": round, "vm": name, "rolled_back_to": seq,
                            "link": report.verified.link.to_hex(),
                            "state_root": report.verified.state_root.to_hex(),
                        }))
                    } else {
                        println!(
                            "{name} round {round}: rolled back to seq {seq} as the server asked (verified links 0..={seq}); the guest runs on"
                        );
                        Ok(())
                    }
                }
                Event::Reported {
                    round,
                    request,
                    seq,
                    verdict,
                } => {
                    if json {
                        output::print(&serde_json::json!({
                            "round": round, "vm": name, "snapshot_request": request,
                            "seq": seq, "verdict": verdict,
                        }))
                    } else {
                        println!(
                            "{name} round {round}: snapshot request {request}: the running VM and seq {seq}: {verdict} (signed report sent)"
                        );
                        Ok(())
                    }
                }
                Event::RollbackSkipped { round, seq } => {
                    eprintln!(
                        "vmattest: {name} round {round}: the server asks for a rollback to seq {seq}, but no --store was given"
                    );
                    Ok(())
                }
                Event::Failed { round, error } => {
                    if !args.once {
                        eprintln!("vmattest: {name} round {round}: {error}");
                    }
                    last_error = Some(error);
                    Ok(())
                }
            };
            if let Err(e) = printed {
                print_failed.get_or_insert(e);
            }
        },
    );
    if let Some(e) = print_failed {
        return Err(e);
    }
    if args.once {
        if let Some(e) = last_error {
            return Err(run_err(e));
        }
        if alert {
            return Err(VerificationFailed(format!(
                "{name}: the server's appraisal raised an alert"
            ))
            .into());
        }
    }
    Ok(())
}

#[derive(Debug, Serialize)]
struct CheckJson {
    name: String,
    expected: String,
    found: String,
    matches: bool,
}

#[derive(Debug, Serialize)]
struct ReportJson {
    vm: String,
    seq: u64,
    link: String,
    verdict: &'static str,
    components: Vec<CheckJson>,
    out: Option<String>,
    report_id: Option<i64>,
}

fn report_err(e: ReportError) -> anyhow::Error {
    if e.is_verification() {
        VerificationFailed(e.to_string()).into()
    } else {
        anyhow::Error::new(e)
    }
}

/// `vmattest attest snapshot`.
pub fn attest(cmd: AttestCommand, json: bool) -> anyhow::Result<()> {
    let AttestCommand::Snapshot {
        store,
        verify,
        seq,
        vm,
        signer,
        nonce,
        out,
        server,
        token_file,
        ca_cert,
    } = cmd;
    let nonce = parse_hex("--nonce", &nonce)?;
    if server.is_some() && nonce.is_empty() {
        // The server accepts a report only as the answer to one of its pending requests.
        bail!("--server: expected --nonce with the nonce of the server's pending snapshot request");
    }
    if nonce.len() > MAX_NONCE_LEN {
        bail!(
            "--nonce: {} bytes, expected at most {MAX_NONCE_LEN}",
            nonce.len()
        );
    }
    let spec = load_spec(&vm.vm)?;
    let signer = super::keys::evidence_signer(&signer)?;
    let (keys, secret) = load_verify(&verify)?;
    // Connect (and read the token) before the work, so that bad input fails fast.
    let client = match &server {
        Some(url) => Some(Client::connect(&Connect {
            server: Some(url),
            token_file: token_file.as_deref(),
            ca_cert: ca_cert.as_deref(),
        })?),
        None => None,
    };
    let chain = ChainCheck {
        store: &store.store,
        seq,
        keys: &keys,
        secret: secret.as_ref(),
    };
    let signed = vmattest_agent::attest_snapshot(&chain, &spec, signer.as_ref(), &nonce)
        .map_err(report_err)?;
    let bytes = signed.encode()?;
    if let Some(path) = &out {
        write_atomic(path, &bytes)?;
    }
    let receipt = match &client {
        Some(c) => Some(c.post_report(spec.name(), &bytes)?),
        None => None,
    };
    let r = signed.value();
    if json {
        output::print(&ReportJson {
            vm: r.vm.clone(),
            seq: r.seq.0,
            link: r.link.to_hex(),
            verdict: r.verdict(),
            components: r
                .components
                .iter()
                .map(|c| CheckJson {
                    name: c.name.clone(),
                    expected: c.expected.to_hex(),
                    found: c.found.to_hex(),
                    matches: c.matches(),
                })
                .collect(),
            out: out.as_ref().map(|p| p.display().to_string()),
            report_id: receipt.as_ref().map(|x| x.id),
        })?;
    } else {
        for c in &r.components {
            if c.matches() {
                println!("Match     {}  {}", c.name, c.found);
            } else {
                println!(
                    "Mismatch  {}  found {}, snapshot has {}",
                    c.name, c.found, c.expected
                );
            }
        }
        println!(
            "{}: {} with seq {} (link {}); device state not compared",
            r.vm,
            r.verdict(),
            r.seq,
            r.link
        );
        if let Some(x) = &receipt {
            println!("  report {} stored by the server ({})", x.id, x.verdict);
        }
    }
    if !r.matches() {
        let bad: Vec<&str> = r
            .components
            .iter()
            .filter(|c| !c.matches())
            .map(|c| c.name.as_str())
            .collect();
        return Err(VerificationFailed(format!(
            "{}: differs from seq {} in {}",
            r.vm,
            r.seq,
            bad.join(", ")
        ))
        .into());
    }
    Ok(())
}
