//! `vmattest agent` (answer the server's challenges for a VM) and `vmattest attest snapshot`
//! (compare a running VM with an attested snapshot).

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::bail;
use vmattest_agent::report::ChainCheck;
use vmattest_agent::run::{Event, LoopOptions, Rollback, RunError, run_loop};
use vmattest_host::report::SnapshotReportJson;
use vmattest_host::verdict::Verdict;
use vmattest_host::{files, keys, record};

use super::{LoadedGuest, connect, signer_choice, verifier};
use crate::args::{AgentArgs, AttestCommand, ServerArgs, VerifyArgs};
use crate::output;

/// What one event of the loop prints: results on stdout, a skipped rollback on stderr, and a
/// failed locate there too when the loop runs on (with `--once` the result's exit code says
/// enough, and an error stays one line).
fn print_event(name: &str, event: &Event, json: bool, once: bool) -> anyhow::Result<()> {
    match event {
        Event::LocateFailed { .. } if once => {}
        Event::LocateFailed { .. } | Event::RollbackSkipped { .. } => {
            let _ = writeln!(std::io::stderr(), "vmattest: {}", event.text(name));
        }
        _ => {
            if let Some(j) = event.to_json(name) {
                output::show(json, &j, |_| event.text(name))?;
            }
        }
    }
    Ok(())
}

/// `vmattest agent`.
pub fn run(args: AgentArgs, json: bool) -> anyhow::Result<()> {
    let loaded = LoadedGuest::load(&args.vm)?;
    let guest = loaded.guest();
    let name = args.name.clone().unwrap_or_else(|| guest.name().to_owned());
    let client = connect(&ServerArgs {
        server: Some(args.server.clone()),
        token_file: Some(args.token_file.clone()),
        ca_cert: args.ca_cert.clone(),
    })?;
    let signer = keys::signer(&signer_choice(&args.signer))?;
    let chain = match &args.store {
        Some(_) => Some(verifier(&VerifyArgs {
            pubkeys: args.pubkeys.clone(),
            secret: args.secret.clone(),
            revocations: Vec::new(),
        })?),
        None => None,
    };
    let rollback = args
        .store
        .as_deref()
        .zip(chain.as_ref())
        .map(|(store, verifier)| Rollback { store, verifier });
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
        &guest,
        signer.as_ref(),
        &opts,
        &stop,
        &mut |event| {
            if let Err(e) = print_event(&name, &event, json, args.once) {
                // Nobody reads the output any more: stop after this round.
                stop.store(true, Ordering::SeqCst);
                print_failed.get_or_insert(e);
            }
            match event {
                Event::Answered { result, .. } => {
                    alert = result.alert;
                    last_error = None;
                }
                Event::Failed { round, error } => {
                    if !args.once {
                        let _ =
                            writeln!(std::io::stderr(), "vmattest: {name} round {round}: {error}");
                    }
                    last_error = Some(error);
                }
                _ => {}
            }
        },
    );
    if let Some(e) = print_failed {
        return Err(e);
    }
    if args.once {
        if let Some(e) = last_error {
            return Err(e.into());
        }
        if alert {
            return Err(Verdict::Alert { vm: name }.into());
        }
    }
    Ok(())
}

/// `vmattest attest snapshot`.
pub fn attest(cmd: AttestCommand, json: bool) -> anyhow::Result<()> {
    let AttestCommand::Snapshot {
        store,
        verify,
        seq,
        vm: arg,
        signer,
        nonce,
        out,
        server,
        token_file,
        ca_cert,
    } = cmd;
    let nonce = record::nonce(&nonce)?;
    if server.is_some() && nonce.is_empty() {
        // The server accepts a report only as the answer to one of its pending requests.
        bail!("--server: expected --nonce with the nonce of the server's pending snapshot request");
    }
    let loaded = LoadedGuest::load(&arg)?;
    let guest = loaded.guest();
    let signer = keys::signer(&signer_choice(&signer))?;
    let v = verifier(&verify)?;
    // Connect (and read the token) before the work, so that bad input fails fast.
    let client = match &server {
        Some(_) => Some(connect(&ServerArgs {
            server: server.clone(),
            token_file,
            ca_cert,
        })?),
        None => None,
    };
    let chain = ChainCheck {
        store: &store.store,
        seq,
        keys: v.pinned(),
        secret: v.secret(),
    };
    let signed = vmattest_agent::attest_snapshot(&chain, &guest, signer.as_ref(), &nonce)?;
    let bytes = signed.encode()?;
    if let Some(path) = &out {
        files::write_atomic(path, &bytes, "snapshot report")?;
    }
    let receipt = match &client {
        Some(c) => Some(c.post_report(guest.name(), &bytes)?),
        None => None,
    };
    let r = SnapshotReportJson::new(signed.value(), out.as_deref(), receipt.as_ref());
    let differs = r.differs();
    // Under --json a differing VM prints only the error object.
    if !json || differs.is_empty() {
        output::report(json, &r)?;
    }
    if !differs.is_empty() {
        return Err(Verdict::SnapshotDiffers {
            vm: r.vm,
            seq: r.seq,
            components: differs,
        }
        .into());
    }
    Ok(())
}
