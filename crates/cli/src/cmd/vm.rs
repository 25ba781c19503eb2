//! `vmattest vm ...` and the `--vm` forms of `snapshot take` and `snapshot restore`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;
use vmattest_core::chain::SeqNo;
use vmattest_core::class::{Classify as _, ErrorClass};
use vmattest_qemu::capture::{self, CaptureError};
use vmattest_qemu::{VmSpec, restore, vm};
use vmattest_sign::Signer;
use vmattest_store::{ReplayOptions, Store, TakeOptions};

use super::now;
use super::snapshot::{err, load_verify, verified_json};
use crate::VerificationFailed;
use crate::args::{VerifyArgs, VmCommand};
use crate::output;
use crate::progress::Bar;

/// A spec file path, or NAME for `$VMATTEST_VMS/NAME.toml`.
pub fn load_spec(arg: &str) -> anyhow::Result<VmSpec> {
    let direct = Path::new(arg);
    let path = if direct.is_file() || arg.contains('/') || arg.ends_with(".toml") {
        direct.to_path_buf()
    } else {
        let dir =
            std::env::var_os("VMATTEST_VMS").map_or_else(|| PathBuf::from("vms"), PathBuf::from);
        dir.join(format!("{arg}.toml"))
    };
    Ok(VmSpec::load(&path)?)
}

fn capture_err(e: CaptureError) -> anyhow::Error {
    if e.class() == ErrorClass::Verification {
        VerificationFailed(e.to_string()).into()
    } else {
        anyhow::Error::new(e)
    }
}

#[derive(Debug, Serialize)]
struct StatusJson {
    vm: String,
    /// Whether the VM's QEMU process is alive (its guest may still be paused).
    running: bool,
    pid: Option<i32>,
    /// QEMU's run state: "running", "paused", "postmigrate", ...; none while another QMP
    /// client holds the monitor.
    qemu_status: Option<String>,
    /// "stopped" (no QEMU), "running" (the guest executes), "paused" (any other run state,
    /// named by `qemu_status`) or "busy" (the monitor did not answer).
    state: &'static str,
    /// The state a dead capture had left the guest in, when this command resumed it.
    resumed_from: Option<String>,
}

/// `__guard` (hidden): the process `snapshot take --vm` starts before it pauses a guest.
pub fn guard(qmp: &Path, marker: &Path) -> anyhow::Result<()> {
    use std::io::Write as _;
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

/// How a capture starts its guardian: this binary's hidden `__guard` subcommand.
fn guard_program() -> anyhow::Result<vmattest_qemu::guard::GuardProgram> {
    let program =
        std::env::current_exe().context("locating the vmattest binary to guard the pause")?;
    Ok(vmattest_qemu::guard::GuardProgram {
        program,
        args: vec!["__guard".into()],
    })
}

/// Starts the VM and waits for `wait_for` on its console; returns its PID and the seconds taken.
pub fn start_spec(
    spec: &VmSpec,
    wait_for: Option<&str>,
    timeout: u64,
) -> anyhow::Result<(i32, f64)> {
    let t = Instant::now();
    let running = vm::start(spec, false)?;
    let pid = running.pid;
    drop(running);
    if let Some(needle) = wait_for {
        vm::wait_console(spec, needle, Duration::from_secs(timeout))?;
    }
    Ok((pid, t.elapsed().as_secs_f64()))
}

pub fn run(cmd: VmCommand, json: bool) -> anyhow::Result<()> {
    match cmd {
        VmCommand::Launch {
            vm,
            reference,
            signer,
            packages,
            name,
            wait_for,
            timeout,
            out,
            force,
            bind_pcr,
        } => super::launch::launch(
            &super::launch::Launch {
                vm: &vm.vm,
                reference: &reference,
                signer: &signer,
                packages: &packages,
                name: name.as_deref(),
                wait_for: wait_for.as_deref(),
                timeout,
                out: out.as_deref(),
                force,
                bind_pcr,
            },
            json,
        ),
        VmCommand::Start {
            vm,
            wait_for,
            timeout,
        } => {
            let spec = load_spec(&vm.vm)?;
            let (pid, seconds) = start_spec(&spec, wait_for.as_deref(), timeout)?;
            if json {
                output::print(&serde_json::json!({
                    "vm": spec.name(), "pid": pid, "accel": spec.effective_accel(), "seconds": seconds,
                }))
            } else {
                println!("{}", started_line(&spec, pid, seconds));
                Ok(())
            }
        }
        VmCommand::Stop { vm } => {
            let spec = load_spec(&vm.vm)?;
            vm::stop(&spec)?;
            if json {
                output::print(&serde_json::json!({"vm": spec.name(), "running": false}))
            } else {
                println!("stopped {}", spec.name());
                Ok(())
            }
        }
        VmCommand::Status { vm } => {
            let spec = load_spec(&vm.vm)?;
            let s = vm::status(&spec);
            let state = match (s.running, s.qemu_status.as_deref()) {
                (false, _) => "stopped",
                (true, Some("running")) => "running",
                (true, Some(_)) => "paused",
                (true, None) => "busy",
            };
            let out = StatusJson {
                vm: spec.name().to_owned(),
                running: s.running,
                pid: s.pid,
                qemu_status: s.qemu_status,
                state,
                resumed_from: s.resumed_from,
            };
            if json {
                return output::print(&out);
            }
            if let Some(from) = &out.resumed_from {
                println!(
                    "{}: was left {from} by an interrupted capture; resumed",
                    out.vm
                );
            }
            match (out.pid, out.qemu_status.as_deref()) {
                (None, _) => println!("{}: stopped", out.vm),
                (Some(pid), Some(q)) => println!("{}: {state} (QEMU {q}), pid {pid}", out.vm),
                (Some(pid), None) => println!(
                    "{}: QEMU runs as pid {pid}; its monitor is busy (a capture or another client), state unknown",
                    out.vm
                ),
            }
            Ok(())
        }
    }
}

#[derive(Debug, Serialize)]
struct CaptureJson {
    vm: String,
    #[serde(flatten)]
    summary: super::snapshot::SummaryJson,
    device_state_bytes: u64,
    downtime_ms: f64,
    device_state_ms: f64,
    measure_ms: f64,
    commit_ms: f64,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `snapshot take --vm`: pause, measure, resume, then store and sign.
pub fn take(
    root: &Path,
    spec: &str,
    signers: &[Box<dyn Signer>],
    secret: Option<&Path>,
    json: bool,
) -> anyhow::Result<(vmattest_store::TakeSummary, String)> {
    let spec = load_spec(spec)?;
    // The QEMU program, for `--bind-pcr` to measure.
    let hypervisor = spec.qemu().to_owned();
    let signer_refs: Vec<&dyn Signer> = signers.iter().map(AsRef::as_ref).collect();
    let secret = secret.map(super::tpm::load_secret).transpose()?;
    let store = Store::open_writer(root).map_err(err)?;
    let opts = TakeOptions {
        signers: &signer_refs,
        time: now(),
        secret: secret.as_ref(),
    };
    let guard = guard_program()?;
    let r = capture::capture(&spec, &store, &opts, Some(&guard)).map_err(capture_err)?;
    let s = &r.summary;
    if json {
        output::print(&CaptureJson {
            vm: spec.name().to_owned(),
            summary: s.into(),
            device_state_bytes: r.device_state_bytes,
            downtime_ms: ms(r.downtime),
            device_state_ms: ms(r.device_state),
            measure_ms: ms(r.measure),
            commit_ms: ms(r.commit),
        })?;
        return Ok((r.summary, hypervisor));
    }
    println!(
        "{} seq {}: downtime {:.1} ms (device state {:.1} ms, {} bytes; measure {:.1} ms); {} of {} pages changed, {} bytes stored; commit {:.1} ms",
        spec.name(),
        s.seq,
        ms(r.downtime),
        ms(r.device_state),
        r.device_state_bytes,
        ms(r.measure),
        s.changed_pages,
        s.total_pages,
        s.stored_bytes,
        ms(r.commit)
    );
    println!("  link {}\n  state root {}", s.link, s.state_root);
    Ok((r.summary, hypervisor))
}

/// `snapshot restore --vm`: verify, then replace the VM's state and resume it.
pub fn restore(
    root: &Path,
    verify: &VerifyArgs,
    seq: Option<u64>,
    spec: &str,
    json: bool,
) -> anyhow::Result<()> {
    let spec = load_spec(spec)?;
    let (keys, secret) = load_verify(verify)?;
    let mut store = Store::open(root).map_err(err)?;
    let bar = Bar::later("verifying", json);
    store.set_progress(Box::new(bar.clone()));
    let opts = ReplayOptions {
        upto: seq.map(SeqNo),
        keys: &keys,
        secret: secret.as_ref(),
        max_age: None,
    };
    let r = restore::restore(&spec, &store, &opts);
    bar.finish();
    let r = r.map_err(capture_err)?;
    if json {
        let mut v = serde_json::to_value(verified_json(&r.verified, None))
            .context("encoding the result")?;
        v["vm"] = spec.name().into();
        v["rebuild_ms"] = ms(r.rebuild).into();
        v["switch_ms"] = ms(r.switch).into();
        return output::print(&v);
    }
    println!(
        "{} rolled back to seq {} (verified links 0..={}; rebuild {:.0} ms, QEMU switch {:.0} ms); the guest runs on",
        spec.name(),
        r.verified.seq,
        r.verified.seq,
        ms(r.rebuild),
        ms(r.switch)
    );
    Ok(())
}

/// What `vm start` and `vm launch` print once QEMU runs.
pub fn started_line(spec: &VmSpec, pid: i32, seconds: f64) -> String {
    format!(
        "started {} (pid {pid}, {}) in {seconds:.2} s; console {}",
        spec.name(),
        spec.effective_accel(),
        spec.console_path().display()
    )
}
