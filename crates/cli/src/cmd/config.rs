//! `vmattest config ...`: configuration attestation from the command line (docs/CONFIG.md).

use vmattest_api::NewReferenceConfig;
use vmattest_host::measurement::{self, MeasurementError};
use vmattest_host::report::DisclosedJson;
use vmattest_host::verdict::Verdict;
use vmattest_host::{keys, vm};

use super::{packages, signer_choice};
use crate::args::{ConfigCommand, ConfigSource};
use crate::output::{self, outln};

/// The parameters of `--vm` or `--libvirt`, with the package parameters, and the VM's name
/// (the spec's, or the domain XML's `<name>`).
fn source_params(
    src: &ConfigSource,
) -> anyhow::Result<(Vec<vmattest_vmconfig::Param>, Option<String>)> {
    let (params, name) = match (&src.vm, &src.libvirt, &src.domain) {
        (Some(v), None, None) => {
            let spec = vm::load_spec(v)?;
            let params = vmattest_vmconfig::spec_params(&spec).map_err(MeasurementError::Spec)?;
            (params, Some(spec.name().to_owned()))
        }
        (None, Some(xml), None) => measurement::domain_params(xml)?,
        (None, None, Some(d)) => {
            let xml = vmattest_host::domain::definition(d, src.connect.as_deref())?;
            let origin = std::path::PathBuf::from(format!("of domain {d}"));
            measurement::domain_text_params(&xml, &origin)?
        }
        _ => anyhow::bail!("give one of --vm SPEC, --libvirt DOMAIN.xml and --domain NAME"),
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
            let r = measurement::measure_into(&out, params, vm, signer.as_ref(), force, bind_pcr)?;
            output::report(json, &r)
        }
        ConfigCommand::Show { dir } => output::report(json, &measurement::load(&dir)?.describe()),
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
            output::report(json, &DisclosedJson::new(&param, &statement))
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
            let client = super::connect_user(conn, true)?;
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
