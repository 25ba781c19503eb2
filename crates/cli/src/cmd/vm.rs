//! `vmattest vm ...`: start, stop, status and the configuration-gated launch.

use std::io::Write as _;
use std::path::Path;

use vmattest_host::launch::{self, Gate, Launch, LaunchError};
use vmattest_host::{keys, vm};
use vmattest_qemu::VmSpec;

use super::{connect, packages, secs, signer_choice};
use crate::args::{ServerArgs, VmCommand};
use crate::output::{self, outln};

/// `__guard` (hidden): the process `snapshot take --vm` starts before it pauses a guest.
pub fn guard(qmp: &Path, marker: &Path) -> anyhow::Result<()> {
    let outcome = vmattest_qemu::guard::guard(qmp, marker, std::io::stdin().lock())?;
    if let vmattest_qemu::guard::Outcome::Resumed(from) = outcome {
        // The capturer's stderr, if anyone still reads it.
        let _ = writeln!(
            std::io::stderr(),
            "vmattest: the capture died while the guest was paused ({from}); resumed it"
        );
    }
    Ok(())
}

fn started_line(spec: &VmSpec, pid: i32, seconds: f64) -> String {
    format!(
        "started {} (pid {pid}, {}) in {seconds:.2} s; console {}",
        spec.name(),
        spec.effective_accel(),
        spec.console_path().display()
    )
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
            let m = &launched.measurement;
            let seconds = launched.started.elapsed.as_secs_f64();
            if json {
                return output::print(&serde_json::json!({
                    "vm": spec.name(), "pid": launched.started.pid, "accel": spec.effective_accel(),
                    "seconds": seconds, "root": m.root(), "count": m.opening.len(),
                    "checked": launched.checked_by,
                }));
            }
            outln!(
                "config root {} ({} params) matches the {} reference",
                m.root(),
                m.opening.len(),
                if launched.checked_by == "local" {
                    "local"
                } else {
                    "server's"
                }
            );
            outln!("{}", started_line(&spec, launched.started.pid, seconds));
            Ok(())
        }
        VmCommand::Start {
            vm: arg,
            wait_for,
            timeout,
        } => {
            let spec = vm::load_spec(&arg.vm)?;
            let s = vm::start(&spec, wait_for.as_deref(), secs(timeout))?;
            let seconds = s.elapsed.as_secs_f64();
            let j = serde_json::json!({
                "vm": spec.name(), "pid": s.pid, "accel": spec.effective_accel(), "seconds": seconds,
            });
            output::show(json, &j, |_| started_line(&spec, s.pid, seconds))
        }
        VmCommand::Stop { vm: arg } => {
            let spec = vm::load_spec(&arg.vm)?;
            vmattest_qemu::vm::stop(&spec)?;
            let j = serde_json::json!({"vm": spec.name(), "running": false});
            output::show(json, &j, |_| format!("stopped {}", spec.name()))
        }
        VmCommand::Status { vm: arg } => {
            let spec = vm::load_spec(&arg.vm)?;
            let s = vm::status(&spec);
            if json {
                return output::print(&s);
            }
            if let Some(from) = &s.resumed_from {
                outln!(
                    "{}: was left {from} by an interrupted capture; resumed",
                    s.vm
                );
            }
            match (s.pid, s.qemu_status.as_deref()) {
                (None, _) => outln!("{}: stopped", s.vm),
                (Some(pid), Some(q)) => outln!("{}: {} (QEMU {q}), pid {pid}", s.vm, s.state),
                (Some(pid), None) => outln!(
                    "{}: QEMU runs as pid {pid}; its monitor is busy (a capture or another client), state unknown",
                    s.vm
                ),
            }
            Ok(())
        }
    }
}
