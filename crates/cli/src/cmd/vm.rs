//! `vmattest vm ...`: start, stop, status and the configuration-gated launch.

use std::io::Write as _;
use std::path::Path;

use vmattest_host::launch::{self, Gate, Launch, LaunchError};
use vmattest_host::report::{LaunchJson, StartedJson};
use vmattest_host::{domain, keys, vm};

use super::{connect, packages, secs, signer_choice};
use crate::args::{ServerArgs, VmCommand};
use crate::output;

/// `__guard` (hidden): the process `snapshot take --vm` starts before it pauses a guest.
pub fn guard(
    qmp: Option<&Path>,
    domain: Option<&str>,
    uri: Option<&str>,
    marker: &Path,
) -> anyhow::Result<()> {
    let outcome = match (qmp, domain) {
        (Some(qmp), _) => vmattest_qemu::guard::guard(qmp, marker, std::io::stdin().lock())?,
        (None, Some(name)) => domain::guard(name, uri, marker, std::io::stdin().lock())?,
        (None, None) => anyhow::bail!("give --qmp SOCKET or --domain NAME"),
    };
    if let vmattest_qemu::guard::Outcome::Resumed(from) = outcome {
        // The capturer's stderr, if anyone still reads it.
        let _ = writeln!(
            std::io::stderr(),
            "vmattest: the capture died while the guest was paused ({from}); resumed it"
        );
    }
    Ok(())
}

pub fn run(cmd: VmCommand, json: bool) -> anyhow::Result<()> {
    match cmd {
        VmCommand::Launch {
            vm: arg,
            reference,
            signer,
            packages: pkgs,
            name,
            wait_for,
            timeout,
            out,
            force,
            bind_pcr,
        } => {
            let spec = vm::load_spec(&arg.vm)?;
            let name = name.unwrap_or_else(|| spec.name().to_owned());
            let signer = keys::signer(&signer_choice(&signer))?;
            let client;
            let gate = match (&reference.reference, &reference.server) {
                (Some(path), _) => Gate::Local(path),
                (None, server) => {
                    client = connect(&ServerArgs {
                        server: server.clone(),
                        token_file: reference.token_file.clone(),
                        ca_cert: reference.ca_cert.clone(),
                    })?;
                    Gate::Server {
                        client: &client,
                        server_key: reference.server_key.as_deref(),
                    }
                }
            };
            let pkgs = packages(&pkgs);
            let l = Launch {
                spec: &spec,
                name: &name,
                signer: signer.as_ref(),
                packages: &pkgs,
                gate,
                out: out.as_deref(),
                force,
                bind_pcr,
                wait_for: wait_for.as_deref(),
                timeout: secs(timeout),
                time: vmattest_host::now(),
            };
            let launched = match launch::launch(&l) {
                Err(LaunchError::Refused { last, mismatches }) => {
                    // One line per mismatch; the last is the error itself.
                    for x in &mismatches[..mismatches.len().saturating_sub(1)] {
                        let line = vmattest_host::measurement::mismatch_line(x);
                        let _ = writeln!(std::io::stderr(), "vmattest: launch refused: {line}");
                    }
                    return Err(LaunchError::Refused { last, mismatches }.into());
                }
                other => other?,
            };
            output::report(json, &LaunchJson::new(&spec, &launched))
        }
        VmCommand::Start {
            vm: arg,
            wait_for,
            timeout,
        } => {
            let spec = vm::load_spec(&arg.vm)?;
            let s = vm::start(&spec, wait_for.as_deref(), secs(timeout))?;
            output::report(json, &StartedJson::new(&spec, &s))
        }
        VmCommand::Stop { vm: arg } => {
            let spec = vm::load_spec(&arg.vm)?;
            vmattest_qemu::vm::stop(&spec)?;
            let j = serde_json::json!({"vm": spec.name(), "running": false});
            output::show(json, &j, |_| format!("stopped {}", spec.name()))
        }
        VmCommand::Status { vm: arg, domain } => match (arg, domain.domain) {
            (Some(arg), _) => output::report(json, &vm::status(&vm::load_spec(&arg)?)),
            (None, Some(name)) => {
                output::report(json, &domain::status(&name, domain.connect.as_deref())?)
            }
            (None, None) => anyhow::bail!("give --vm SPEC or --domain NAME"),
        },
    }
}
