//! `vmattest libvirt ...`: the launch gate libvirt runs before it starts a domain.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use vmattest_host::hook::{self, HOOKS_DIR, HookChange, HookGate};
use vmattest_host::keys::{self, SignerChoice};

use super::connect;
use crate::args::{HookArgs, LibvirtCommand, ServerArgs};
use crate::output;

pub fn run(cmd: LibvirtCommand, json: bool) -> anyhow::Result<()> {
    match cmd {
        LibvirtCommand::InstallHook { gate, hooks_dir } => {
            let dir = hooks_dir.unwrap_or_else(|| PathBuf::from(HOOKS_DIR));
            let path = hook::script_path(&dir, gate.domain.as_deref())?;
            let exe = std::env::current_exe().context("finding this vmattest program")?;
            hook::install(&path, &exe, &script_args(&gate)?)?;
            output::report(
                json,
                &HookChange {
                    path: path.display().to_string(),
                    domain: gate.domain,
                    action: "installed",
                },
            )
        }
        LibvirtCommand::UninstallHook { domain, hooks_dir } => {
            let dir = hooks_dir.unwrap_or_else(|| PathBuf::from(HOOKS_DIR));
            let path = hook::script_path(&dir, domain.as_deref())?;
            let removed = hook::uninstall(&path)?;
            output::report(
                json,
                &HookChange {
                    path: path.display().to_string(),
                    domain,
                    action: if removed { "removed" } else { "absent" },
                },
            )
        }
        LibvirtCommand::Hook { gate, libvirt_args } => run_hook(&gate, &libvirt_args),
    }
}

/// What libvirt runs. Nothing goes to standard output: libvirt takes a hook's output as a
/// replacement domain XML for some operations.
fn run_hook(gate: &HookArgs, argv: &[String]) -> anyhow::Result<()> {
    if !hook::gated(argv, gate.domain.as_deref()) {
        // Not ours to judge: succeed without reading keys, tokens or the server, and take
        // libvirt's input so that it never writes into a closed pipe.
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
        return Ok(());
    }
    let cap = vmattest_vmconfig::libvirt::MAX_XML_BYTES;
    let xml = vmattest_core::limit::read_to_cap(std::io::stdin().lock(), cap, 64 * 1024)
        .context("reading the domain XML from standard input")?
        .with_context(|| {
            format!("the domain XML on standard input: expected at most {cap} bytes")
        })?;
    let xml = String::from_utf8(xml)
        .map_err(|_| anyhow::anyhow!("the domain XML on standard input: expected UTF-8 text"))?;
    let r = &gate.reference;
    let client;
    let signer;
    let g = match (&r.reference, &r.server) {
        (Some(reference), _) => HookGate::Local(reference),
        (None, _) => {
            client = connect(&ServerArgs {
                server: r.server.clone(),
                token_file: r.token_file.clone(),
                ca_cert: r.ca_cert.clone(),
            })?;
            signer = keys::signer(&hook_signer(gate)?)?;
            HookGate::Server {
                client: &client,
                server_key: r.server_key.as_deref(),
                signer: signer.as_ref(),
            }
        }
    };
    let outcome = hook::run(argv, &xml, &g, gate.domain.as_deref(), gate.fail_open)?;
    if let Some(w) = &outcome.warning {
        eprintln!(
            "vmattest: domain {}: {w}; started anyway (--fail-open)",
            outcome.domain
        );
    }
    Ok(())
}

fn hook_signer(gate: &HookArgs) -> anyhow::Result<SignerChoice> {
    match (&gate.key, &gate.signer) {
        (Some(k), _) => Ok(SignerChoice::KeyFile(k.clone())),
        (None, Some(_)) => Ok(SignerChoice::Tpm),
        (None, None) => {
            anyhow::bail!("--server needs --key FILE or --signer tpm to sign measurements")
        }
    }
}

/// The hook's own arguments, every file made absolute (libvirt runs hooks from `/`) and
/// checked to exist now rather than at the first domain start.
fn script_args(gate: &HookArgs) -> anyhow::Result<Vec<String>> {
    fn file(flag: &str, p: &Path, out: &mut Vec<String>) -> anyhow::Result<()> {
        let abs = std::fs::canonicalize(p).with_context(|| format!("{flag} {}", p.display()))?;
        out.extend([flag.to_owned(), abs.display().to_string()]);
        Ok(())
    }
    let r = &gate.reference;
    let mut out = vec!["libvirt".to_owned(), "hook".to_owned()];
    if let Some(p) = &r.reference {
        file("--reference", p, &mut out)?;
    }
    if let Some(url) = &r.server {
        hook_signer(gate)?;
        out.extend(["--server".to_owned(), url.clone()]);
        for (flag, p) in [
            ("--token-file", &r.token_file),
            ("--ca-cert", &r.ca_cert),
            ("--server-key", &r.server_key),
            ("--key", &gate.key),
        ] {
            if let Some(p) = p {
                file(flag, p, &mut out)?;
            }
        }
        if gate.signer.is_some() {
            out.extend(["--signer".to_owned(), "tpm".to_owned()]);
        }
        if gate.fail_open {
            out.push("--fail-open".to_owned());
        }
    }
    if let Some(d) = &gate.domain {
        out.extend(["--domain".to_owned(), d.clone()]);
    }
    Ok(out)
}
