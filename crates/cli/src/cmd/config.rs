//! `vmattest config ...`: configuration attestation from the command line (docs/CONFIG.md).

use serde::Serialize;
use vmattest_api::NewReferenceConfig;
use vmattest_host::measurement::{self, MeasurementError};
use vmattest_host::verdict::Verdict;
use vmattest_host::{eventlog, keys, vm};

use super::{connect, packages, signer_choice};
use crate::args::{ConfigCommand, ConfigSource};
use crate::output::{self, outln};

#[derive(Debug, Serialize)]
struct MeasureJson {
    vm: String,
    root: String,
    count: usize,
    params: Vec<String>,
    key_ids: Vec<String>,
    opening: String,
    statement: String,
    /// With `--bind-pcr`: the quote file and the nonce it carries.
    #[serde(skip_serializing_if = "Option::is_none")]
    quote: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    quote_nonce: Option<String>,
}

/// The parameters of `--vm` or `--libvirt`, with the package parameters, and the VM's name
/// (the spec's, or the domain XML's `<name>`).
fn source_params(
    src: &ConfigSource,
) -> anyhow::Result<(Vec<vmattest_vmconfig::Param>, Option<String>)> {
    let (params, name) = match (&src.vm, &src.libvirt) {
        (Some(v), None) => {
            let spec = vm::load_spec(v)?;
            let params = vmattest_vmconfig::spec_params(&spec).map_err(MeasurementError::Spec)?;
            (params, Some(spec.name().to_owned()))
        }
        (None, Some(xml)) => measurement::domain_params(xml)?,
        _ => anyhow::bail!("give one of --vm SPEC and --libvirt DOMAIN.xml"),
    };
    Ok((
        measurement::canonical(params, &packages(&src.packages))?,
        name,
    ))
}

pub fn run(cmd: ConfigCommand, json: bool) -> anyhow::Result<()> {
    match cmd {
        ConfigCommand::Measure {
            source,
            signer,
            name,
            out,
            force,
            bind_pcr,
        } => {
            let (params, source_name) = source_params(&source)?;
            let Some(vm) = name.or(source_name) else {
                anyhow::bail!("--name VM is required: the domain XML names no VM");
            };
            let signer = keys::signer(&signer_choice(&signer))?;
            let m = measurement::measure(params, &vm, signer.as_ref(), vmattest_host::now())?;
            let (opening, statement) = measurement::write(&out, &m, force)?;
            let quote = match bind_pcr {
                Some(pcr) => {
                    let path = out.join("config.quote.json");
                    let object = m.statement.object_bytes();
                    eventlog::bind_config(&path, object, &vm, &m.opening.root(), pcr)?;
                    Some((path, hex::encode(eventlog::config_quote_nonce(object))))
                }
                None => None,
            };
            if json {
                return output::print(&MeasureJson {
                    vm,
                    root: m.root(),
                    count: m.opening.len(),
                    params: m.params().into_iter().map(|p| p.name).collect(),
                    key_ids: m.key_ids(),
                    opening: opening.display().to_string(),
                    statement: statement.display().to_string(),
                    quote: quote.as_ref().map(|(p, _)| p.display().to_string()),
                    quote_nonce: quote.map(|(_, n)| n),
                });
            }
            outln!(
                "config root {} ({} params) of VM {vm}, signed by {}",
                m.root(),
                m.opening.len(),
                m.key_ids().join(", ")
            );
            outln!(
                "  opening   {} (mode 0600: holds every salt, keep it private)",
                opening.display()
            );
            outln!("  statement {}", statement.display());
            if let Some((path, nonce)) = quote {
                outln!(
                    "  quote     {} (verify: vmattest tpm verify-quote {} --ak AK --nonce {nonce})",
                    path.display(),
                    path.display()
                );
            }
            Ok(())
        }
        ConfigCommand::Show { dir } => {
            let m = measurement::load(&dir)?;
            let s = m.statement.value();
            if json {
                return output::print(&serde_json::json!({
                    "vm": s.vm, "root": m.root(), "count": m.opening.len(),
                    "time": s.time.to_string(), "key_ids": m.key_ids(),
                    "params": m.params().into_iter()
                        .map(|p| serde_json::json!({"name": p.name, "value": p.value}))
                        .collect::<Vec<_>>(),
                }));
            }
            outln!(
                "VM {}: config root {} ({} params), signed at {} by {}",
                s.vm,
                m.root(),
                m.opening.len(),
                s.time,
                m.key_ids().join(", ")
            );
            for p in m.params() {
                outln!("  {} = {}", p.name, p.value);
            }
            Ok(())
        }
        ConfigCommand::Disclose { dir, param, out } => {
            let (m, bytes) = measurement::disclose(&dir, &param)?;
            vmattest_host::files::write_atomic(&out, &bytes, "config disclosure")?;
            let j = serde_json::json!({
                "param": param, "root": m.root(), "proof": out.display().to_string(), "bytes": bytes.len(),
            });
            output::show(json, &j, |_| {
                format!(
                    "disclosed {param} under root {} in {}",
                    m.root(),
                    out.display()
                )
            })
        }
        ConfigCommand::VerifyDisclosure { proof, pubkeys } => {
            let keys = keys::pinned(&pubkeys)?;
            let (param, statement) = measurement::verify_disclosure(&proof, &keys)?;
            let s = statement.value();
            let signers: Vec<String> = s.key_ids.iter().map(|k| k.to_hex()).collect();
            if json {
                return output::print(&serde_json::json!({
                    "ok": true, "name": param.name, "value": param.value, "vm": s.vm,
                    "root": s.root.to_hex(), "count": s.count, "time": s.time.to_string(),
                    "signers": signers,
                }));
            }
            outln!("{} = {}", param.name, param.value);
            outln!(
                "  root {} ({} params) of VM {} at {}, signed by {}",
                s.root,
                s.count,
                s.vm,
                s.time,
                signers.join(", ")
            );
            Ok(())
        }
        ConfigCommand::Check { dir, reference } => {
            let m = measurement::load(&dir)?;
            let mismatches = measurement::check(&reference, &m.params())?;
            if json {
                if mismatches.is_empty() {
                    output::print(&serde_json::json!({
                        "ok": true, "root": m.root(), "count": m.opening.len(), "mismatches": mismatches,
                    }))?;
                }
            } else {
                for x in &mismatches {
                    outln!("{}", measurement::mismatch_line(x));
                }
            }
            if !mismatches.is_empty() {
                return Err(Verdict::ConfigDiffers {
                    count: mismatches.len(),
                    total: m.opening.len(),
                    reference,
                    names: mismatches.into_iter().map(|x| x.name).collect(),
                }
                .into());
            }
            if !json {
                outln!(
                    "config root {} ({} params) matches {}",
                    m.root(),
                    m.opening.len(),
                    reference.display()
                );
            }
            Ok(())
        }
        ConfigCommand::PushReference {
            conn,
            vm: name,
            reference,
        } => {
            // Parsed here too, so that a bad file is reported with its path before any request.
            let (toml, _) = measurement::load_reference(&reference)?;
            let client = connect(&conn)?;
            let info = client.put_reference_config(&name, &NewReferenceConfig { toml })?;
            output::show(json, &info, |i| {
                format!(
                    "reference configuration of VM {} stored (created {})",
                    i.vm, i.created
                )
            })
        }
    }
}
