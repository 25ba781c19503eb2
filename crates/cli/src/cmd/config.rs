//! `vmattest config ...`: configuration attestation from the command line.
//!
//! A measurement directory holds `config.opening` (every parameter with its salt; private,
//! mode 0600) and `config.statement` (the signed root). Single parameters are disclosed from
//! it with a proof that anyone holding the signer's public key can check.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde::Serialize;
use vmattest_api::{ConfigMismatch, NewReferenceConfig};
use vmattest_client::{Client, Connect};
use vmattest_core::config::reference::Reference;
use vmattest_core::config::{
    ConfigList, ConfigOpening, ConfigParam, MAX_SIGNED_STATEMENT_LEN, MIN_SALT_LEN,
    SignedConfigStatement, verify_disclosure,
};
use vmattest_core::record::Signed;
use vmattest_core::wire::{HEADER_LEN, Kind};
use vmattest_sign::{PublicKey, Signer, keyfile};
use vmattest_vmconfig::Param;

use super::keys::evidence_signer;
use super::{now, read_capped, write_atomic};
use crate::VerificationFailed;
use crate::args::{ConfigCommand, ConfigSource, EvidenceSigner, PackageSource};
use crate::output;

/// The private opening in a measurement directory.
pub const OPENING_FILE: &str = "config.opening";
/// The signed statement in a measurement directory.
pub const STATEMENT_FILE: &str = "config.statement";

/// Largest package manifest, dpkg status file or reference read.
const MAX_TEXT_INPUT: usize = 64 << 20;
use vmattest_core::config::reference::MAX_REFERENCE_LEN as MAX_REFERENCE;

pub fn run(cmd: ConfigCommand, json: bool) -> anyhow::Result<()> {
    match cmd {
        ConfigCommand::Measure {
            source,
            signer,
            name,
            out,
            force,
            bind_pcr,
        } => measure_cmd(
            &source,
            &signer,
            name.as_deref(),
            &out,
            force,
            bind_pcr,
            json,
        ),
        ConfigCommand::Show { dir } => show(&dir, json),
        ConfigCommand::Disclose { dir, param, out } => disclose(&dir, &param, &out, json),
        ConfigCommand::VerifyDisclosure { proof, pubkeys } => {
            verify_disclosure_cmd(&proof, &pubkeys, json)
        }
        ConfigCommand::Check { dir, reference } => check(&dir, &reference, json),
        ConfigCommand::PushReference {
            conn,
            vm,
            reference,
        } => push_reference(&conn, &vm, &reference, json),
    }
}

/// A measured and signed configuration.
pub struct Measurement {
    pub opening: ConfigOpening,
    pub statement: SignedConfigStatement,
}

impl Measurement {
    pub fn root(&self) -> String {
        self.opening.root().to_hex()
    }

    pub fn params(&self) -> Vec<ConfigParam> {
        self.opening
            .params()
            .iter()
            .map(|(p, _)| p.clone())
            .collect()
    }
}

/// Reads a UTF-8 text input of at most `max` bytes.
fn read_text(path: &Path, max: usize, what: &str) -> anyhow::Result<String> {
    use std::io::Read as _;
    use vmattest_vmconfig::measure::{Accept, open_checked};
    // Opened without blocking and checked by fstat: a FIFO here must not hang the command.
    let file = open_checked(path, Accept::File).with_context(|| what.to_string())?;
    let mut bytes = Vec::new();
    file.take(max as u64 + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("{}: cannot read {what}", path.display()))?;
    if bytes.len() > max {
        bail!(
            "{}: expected a {what} of at most {max} bytes",
            path.display()
        );
    }
    String::from_utf8(bytes).map_err(|_| anyhow::anyhow!("{}: {what} is not UTF-8", path.display()))
}

/// The parameters of `--vm` or `--libvirt`, plus the package parameters if a package source is
/// given, and the spec's VM name (none for libvirt XML).
fn source_params(src: &ConfigSource) -> anyhow::Result<(Vec<Param>, Option<String>)> {
    let (mut params, name) = match (&src.vm, &src.libvirt) {
        (Some(vm), None) => {
            let spec = super::vm::load_spec(vm)?;
            (
                vmattest_vmconfig::spec_params(&spec)?,
                Some(spec.name().to_owned()),
            )
        }
        (None, Some(xml)) => (vmattest_vmconfig::load_domain_params(xml)?, None),
        _ => bail!("give one of --vm SPEC and --libvirt DOMAIN.xml"),
    };
    params.extend(package_params(&src.packages)?);
    Ok((vmattest_vmconfig::canonical(params)?, name))
}

/// The package parameters of the given source (none when no source is given).
pub fn package_params(src: &PackageSource) -> anyhow::Result<Vec<Param>> {
    let packages = if let Some(p) = &src.packages {
        let text = read_text(p, MAX_TEXT_INPUT, "package manifest")?;
        Some(vmattest_vmconfig::parse_manifest(
            &text,
            &p.display().to_string(),
        )?)
    } else if let Some(p) = &src.dpkg_status {
        let text = read_text(p, MAX_TEXT_INPUT, "dpkg status file")?;
        Some(vmattest_vmconfig::parse_status(
            &text,
            &p.display().to_string(),
        )?)
    } else if let Some(img) = &src.packages_from_image {
        let text = vmattest_vmconfig::status_from_image(img)?;
        let origin = format!("{}:/var/lib/dpkg/status", img.display());
        Some(vmattest_vmconfig::parse_status(&text, &origin)?)
    } else {
        None
    };
    Ok(match packages {
        Some(packages) => vmattest_vmconfig::package_params(&packages)?,
        None => Vec::new(),
    })
}

/// Salts every parameter with 16 fresh random bytes, builds the opening and signs its
/// statement (timed now, no quote nonce) with `signer`.
pub fn measure(params: Vec<Param>, vm: &str, signer: &dyn Signer) -> anyhow::Result<Measurement> {
    let list = ConfigList::new(
        params
            .into_iter()
            .map(|p| ConfigParam::new(p.name, p.value))
            .collect(),
    )?;
    let mut salts = Vec::with_capacity(list.len());
    for _ in 0..list.len() {
        let mut salt = vec![0u8; MIN_SALT_LEN];
        getrandom::fill(&mut salt).map_err(|e| anyhow::anyhow!("randomness for salts: {e}"))?;
        salts.push(salt);
    }
    let opening = list.salted(salts)?;
    let statement = opening.statement(vm, now(), &[], vec![signer.key_id()]);
    let statement = vmattest_agent::evidence::sign(statement, signer)
        .with_context(|| format!("signing the config statement of VM {vm:?}"))?;
    Ok(Measurement { opening, statement })
}

/// Writes the opening (0600) and the statement into `dir`, refusing to replace either unless
/// `force`. Returns their paths.
pub fn write_measurement(
    dir: &Path,
    m: &Measurement,
    force: bool,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let opening = dir.join(OPENING_FILE);
    let statement = dir.join(STATEMENT_FILE);
    if !force {
        for p in [&opening, &statement] {
            if p.exists() {
                bail!(
                    "{}: already exists; refusing to overwrite without --force",
                    p.display()
                );
            }
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    // The statement first: a directory with an opening always has its statement.
    write_atomic(&statement, &m.statement.encode()?)?;
    vmattest_store::write_atomic_private(&opening, &m.opening.encode())?;
    Ok((opening, statement))
}

/// Reads a measurement directory, refusing a statement that does not sign the opening's root.
pub fn load(dir: &Path) -> anyhow::Result<Measurement> {
    let op_path = dir.join(OPENING_FILE);
    let st_path = dir.join(STATEMENT_FILE);
    let max_opening = usize::try_from(vmattest_core::config::MAX_OPENING_LEN).unwrap_or(usize::MAX);
    let opening = ConfigOpening::decode(&read_capped(&op_path, max_opening, "config opening")?)
        .with_context(|| op_path.display().to_string())?;
    let statement = Signed::decode(&read_capped(
        &st_path,
        MAX_SIGNED_STATEMENT_LEN,
        "signed config statement",
    )?)
    .with_context(|| st_path.display().to_string())?;
    let m = Measurement { opening, statement };
    let s = m.statement.value();
    if s.root != m.opening.root() || s.count as usize != m.opening.len() {
        bail!(
            "{}: signs root {} of {} params, but {} has root {} of {} params",
            st_path.display(),
            s.root,
            s.count,
            op_path.display(),
            m.opening.root(),
            m.opening.len()
        );
    }
    Ok(m)
}

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

fn measure_cmd(
    source: &ConfigSource,
    signer: &EvidenceSigner,
    name: Option<&str>,
    out: &Path,
    force: bool,
    bind_pcr: Option<u32>,
    json: bool,
) -> anyhow::Result<()> {
    let (params, spec_name) = source_params(source)?;
    let Some(vm) = name.map(str::to_owned).or(spec_name) else {
        bail!("--name VM is required with --libvirt");
    };
    let signer = evidence_signer(signer)?;
    let m = measure(params, &vm, signer.as_ref())?;
    let (opening, statement) = write_measurement(out, &m, force)?;
    let quote = match bind_pcr {
        Some(pcr) => {
            let path = out.join("config.quote.json");
            let object = m.statement.object_bytes();
            let root = m.opening.root();
            super::bind::bind_config(&path, object, &vm, &root, pcr)?;
            Some((path, hex::encode(super::bind::config_quote_nonce(object))))
        }
        None => None,
    };
    let key_ids: Vec<String> = m
        .statement
        .value()
        .key_ids
        .iter()
        .map(|k| k.to_hex())
        .collect();
    if json {
        return output::print(&MeasureJson {
            vm,
            root: m.root(),
            count: m.opening.len(),
            params: m.params().into_iter().map(|p| p.name).collect(),
            key_ids,
            opening: opening.display().to_string(),
            statement: statement.display().to_string(),
            quote: quote.as_ref().map(|(p, _)| p.display().to_string()),
            quote_nonce: quote.map(|(_, n)| n),
        });
    }
    println!(
        "config root {} ({} params) of VM {vm}, signed by {}",
        m.root(),
        m.opening.len(),
        key_ids.join(", ")
    );
    println!(
        "  opening   {} (mode 0600: holds every salt, keep it private)",
        opening.display()
    );
    println!("  statement {}", statement.display());
    if let Some((path, nonce)) = quote {
        println!(
            "  quote     {} (verify: vmattest tpm verify-quote {} --ak AK --nonce {nonce})",
            path.display(),
            path.display()
        );
    }
    Ok(())
}

#[derive(Debug, Serialize)]
struct ParamJson {
    name: String,
    value: String,
}

fn show(dir: &Path, json: bool) -> anyhow::Result<()> {
    let m = load(dir)?;
    let s = m.statement.value();
    let key_ids: Vec<String> = s.key_ids.iter().map(|k| k.to_hex()).collect();
    if json {
        return output::print(&serde_json::json!({
            "vm": s.vm,
            "root": m.root(),
            "count": m.opening.len(),
            "time": s.time.secs,
            "key_ids": key_ids,
            "params": m.params().into_iter().map(|p| ParamJson { name: p.name, value: p.value })
                .collect::<Vec<_>>(),
        }));
    }
    println!(
        "VM {}: config root {} ({} params), signed at {} by {}",
        s.vm,
        m.root(),
        m.opening.len(),
        s.time.secs,
        key_ids.join(", ")
    );
    for p in m.params() {
        println!("  {} = {}", p.name, p.value);
    }
    Ok(())
}

fn disclose(dir: &Path, param: &str, out: &Path, json: bool) -> anyhow::Result<()> {
    let m = load(dir)?;
    if m.opening.params().iter().all(|(p, _)| p.name != param) {
        bail!("{}: no parameter {param:?}", dir.display());
    }
    let bytes = m
        .opening
        .disclose_signed(param, &m.statement)
        .with_context(|| format!("disclosing {param:?}"))?;
    write_atomic(out, &bytes)?;
    if json {
        return output::print(&serde_json::json!({
            "param": param, "root": m.root(), "proof": out.display().to_string(),
            "bytes": bytes.len(),
        }));
    }
    println!(
        "disclosed {param} under root {} in {}",
        m.root(),
        out.display()
    );
    Ok(())
}

fn verify_disclosure_cmd(proof: &Path, pubkeys: &[PathBuf], json: bool) -> anyhow::Result<()> {
    let keys = pubkeys
        .iter()
        .map(|k| keyfile::read_public_key(k))
        .collect::<Result<Vec<PublicKey>, _>>()?;
    let max = Kind::ConfigDisclosure.max_body() + HEADER_LEN;
    let bytes = read_capped(proof, max, "config disclosure")?;
    let (param, statement) = verify_disclosure(&bytes)
        .map_err(|e| VerificationFailed(format!("{}: proof: {e}", proof.display())))?;
    vmattest_sign::record::verify_signed(&statement, &keys).map_err(|e| {
        VerificationFailed(format!("{}: statement signature: {e}", proof.display()))
    })?;
    let s = statement.value();
    let signers: Vec<String> = s.key_ids.iter().map(|k| k.to_hex()).collect();
    if json {
        return output::print(&serde_json::json!({
            "ok": true, "name": param.name, "value": param.value, "vm": s.vm,
            "root": s.root.to_hex(), "count": s.count, "time": s.time.secs, "signers": signers,
        }));
    }
    println!("{} = {}", param.name, param.value);
    println!(
        "  root {} ({} params) of VM {} at {}, signed by {}",
        s.root,
        s.count,
        s.vm,
        s.time.secs,
        signers.join(", ")
    );
    Ok(())
}

/// Reads and parses a reference configuration.
fn load_reference(path: &Path) -> anyhow::Result<(String, Reference)> {
    let text = read_text(path, MAX_REFERENCE, "reference configuration")?;
    let reference = Reference::parse(&text).with_context(|| path.display().to_string())?;
    Ok((text, reference))
}

/// The differences between `params` and the reference at `path`.
pub fn check_local(path: &Path, params: &[ConfigParam]) -> anyhow::Result<Vec<ConfigMismatch>> {
    let (_, reference) = load_reference(path)?;
    Ok(reference
        .check(params)
        .into_iter()
        .map(|m| ConfigMismatch {
            name: m.name,
            expected: m.expected,
            found: m.found,
        })
        .collect())
}

pub fn mismatch_line(m: &ConfigMismatch) -> String {
    format!("{}: expected {}, found {}", m.name, m.expected, m.found)
}

fn check(dir: &Path, reference: &Path, json: bool) -> anyhow::Result<()> {
    let m = load(dir)?;
    let mismatches = check_local(reference, &m.params())?;
    if json {
        output::print(&serde_json::json!({
            "ok": mismatches.is_empty(), "root": m.root(), "count": m.opening.len(),
            "mismatches": mismatches,
        }))?;
    } else {
        for x in &mismatches {
            println!("{}", mismatch_line(x));
        }
    }
    if !mismatches.is_empty() {
        let names: Vec<&str> = mismatches.iter().map(|x| x.name.as_str()).collect();
        return Err(VerificationFailed(format!(
            "config check failed: {} of {} params differ from {}: {}",
            mismatches.len(),
            m.opening.len(),
            reference.display(),
            names.join(", ")
        ))
        .into());
    }
    if !json {
        println!(
            "config root {} ({} params) matches {}",
            m.root(),
            m.opening.len(),
            reference.display()
        );
    }
    Ok(())
}

fn push_reference(
    conn: &crate::args::ServerArgs,
    vm: &str,
    reference: &Path,
    json: bool,
) -> anyhow::Result<()> {
    // Parsed here too, so that a bad file is reported with its path before any request.
    let (toml, _) = load_reference(reference)?;
    let client = Client::connect(&Connect {
        server: conn.server.as_deref(),
        token_file: conn.token_file.as_deref(),
        ca_cert: conn.ca_cert.as_deref(),
    })?;
    let info = client.put_reference_config(vm, &NewReferenceConfig { toml })?;
    if json {
        return output::print(&info);
    }
    println!(
        "reference configuration of VM {} stored (created {})",
        info.vm, info.created
    );
    Ok(())
}
