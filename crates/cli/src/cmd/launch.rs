//! `vmattest vm launch`: measure a VM's configuration, check it against a reference (locally
//! or on the server), and start the VM only when every parameter matches.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use vmattest_api::{ConfigCheckRequest, ConfigCheckResult, ErrorCode};
use vmattest_client::{Client, Connect};

use super::config::{check_local, measure, mismatch_line, write_measurement};
use super::keys::evidence_signer;
use crate::VerificationFailed;
use crate::args::{EvidenceSigner, LaunchReference, PackageSource};
use crate::output;

/// A private temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> anyhow::Result<TempDir> {
        use std::os::unix::fs::DirBuilderExt as _;
        let mut nonce = [0u8; 8];
        getrandom::fill(&mut nonce).map_err(|e| anyhow::anyhow!("randomness: {e}"))?;
        let path = std::env::temp_dir().join(format!(
            "vmattest-launch-{}-{}",
            std::process::id(),
            hex::encode(nonce)
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .with_context(|| format!("{}: cannot create", path.display()))?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Options of `vm launch`.
pub struct Launch<'a> {
    pub vm: &'a str,
    pub reference: &'a LaunchReference,
    pub signer: &'a EvidenceSigner,
    pub packages: &'a PackageSource,
    pub name: Option<&'a str>,
    pub wait_for: Option<&'a str>,
    pub timeout: u64,
    pub out: Option<&'a Path>,
    pub force: bool,
    pub bind_pcr: Option<u32>,
}

/// `vm launch`: measure, check against the reference, and start only on a match.
pub fn launch(l: &Launch<'_>, json: bool) -> anyhow::Result<()> {
    let spec = super::vm::load_spec(l.vm)?;
    let vm = l.name.unwrap_or(spec.name()).to_owned();
    let signer = evidence_signer(l.signer)?;
    let mut params = vmattest_vmconfig::spec_params(&spec)?;
    params.extend(super::config::package_params(l.packages)?);
    let params = vmattest_vmconfig::canonical(params)?;
    let m = measure(params, &vm, signer.as_ref())?;
    let _temp;
    let dir = match l.out {
        Some(d) => d.to_path_buf(),
        None => {
            let t = TempDir::new()?;
            let d = t.0.clone();
            _temp = t;
            d
        }
    };
    write_measurement(&dir, &m, l.force)?;
    let r = l.reference;
    let (mismatches, checked_by) = match (&r.reference, &r.server) {
        (Some(path), None) => (check_local(path, &m.params())?, "local"),
        (None, Some(server)) => {
            let client = Client::connect(&Connect {
                server: Some(server),
                token_file: r.token_file.as_deref(),
                ca_cert: r.ca_cert.as_deref(),
            })?;
            let req = ConfigCheckRequest {
                opening: hex::encode(m.opening.encode()),
                statement: hex::encode(m.statement.encode()?),
            };
            let result = client.verify_config(&vm, &req).map_err(|e| {
                // The server checked the statement's signature and refused it: a failed
                // check (exit 1), not bad input.
                if matches!(
                    e.code(),
                    Some(ErrorCode::UnknownKey | ErrorCode::BadSignature)
                ) {
                    anyhow::Error::new(VerificationFailed(format!("launch refused: {e}")))
                } else {
                    anyhow::Error::new(e)
                }
            })?;
            if result.root != m.root() {
                bail!(
                    "the server checked root {}, not the measured {}",
                    result.root,
                    m.root()
                );
            }
            if let Some(key) = &r.server_key {
                check_verdict(key, &result, &vm)?;
            }
            if !result.ok && result.mismatches.is_empty() {
                return Err(VerificationFailed(format!(
                    "launch refused: the server did not accept the configuration of VM {vm}"
                ))
                .into());
            }
            (result.mismatches, "server")
        }
        _ => bail!("give one of --reference REF.toml and --server URL --token-file F"),
    };
    if let Some((last, rest)) = mismatches.split_last() {
        for x in rest {
            eprintln!("vmattest: launch refused: {}", mismatch_line(x));
        }
        return Err(VerificationFailed(format!("launch refused: {}", mismatch_line(last))).into());
    }
    if let Some(pcr) = l.bind_pcr {
        let object = m.statement.object_bytes();
        let quote = dir.join("config.quote.json");
        super::bind::bind_config(&quote, object, &vm, &m.opening.root(), pcr)?;
    }
    let (pid, seconds) = super::vm::start_spec(&spec, l.wait_for, l.timeout)?;
    if json {
        return output::print(&serde_json::json!({
            "vm": spec.name(), "pid": pid, "accel": spec.effective_accel(), "seconds": seconds,
            "root": m.root(), "count": m.opening.len(), "checked": checked_by,
        }));
    }
    println!(
        "config root {} ({} params) matches the {} reference",
        m.root(),
        m.opening.len(),
        if checked_by == "local" {
            "local"
        } else {
            "server's"
        }
    );
    println!("{}", super::vm::started_line(&spec, pid, seconds));
    Ok(())
}

/// Checks the server's verdict JWT under its pinned EAR key and that it says what the answer's
/// plain fields say, for this VM and this root.
fn check_verdict(key_file: &Path, result: &ConfigCheckResult, vm: &str) -> anyhow::Result<()> {
    let text = super::read_capped(key_file, 64 * 1024, "server key")?;
    let key: vmattest_api::EarKey = serde_json::from_slice(&text).with_context(|| {
        format!(
            "{}: expected the JSON of `vmattest remote ear-key --json`",
            key_file.display()
        )
    })?;
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(key.jwk)
        .with_context(|| format!("{}: field jwk: not a JWK", key_file.display()))?;
    let decoding = jsonwebtoken::DecodingKey::from_jwk(&jwk)
        .with_context(|| format!("{}: field jwk", key_file.display()))?;
    let alg = match key.alg.as_str() {
        "EdDSA" => jsonwebtoken::Algorithm::EdDSA,
        "ES384" => jsonwebtoken::Algorithm::ES384,
        other => bail!(
            "{}: field alg: expected EdDSA or ES384, found {other:?}",
            key_file.display()
        ),
    };
    let mut v = jsonwebtoken::Validation::new(alg);
    v.required_spec_claims.clear();
    v.validate_exp = false;
    let refused = |why: String| -> anyhow::Error {
        VerificationFailed(format!("launch refused: the server's verdict {why}")).into()
    };
    let data =
        jsonwebtoken::decode::<serde_json::Value>(&result.result, &decoding, &v).map_err(|e| {
            refused(format!(
                "does not verify under the pinned key {}: {e}",
                key_file.display()
            ))
        })?;
    if data.header.kid.as_deref() != Some(key.kid.as_str()) {
        return Err(refused(format!(
            "names key {:?}, the pinned key is {:?}",
            data.header.kid, key.kid
        )));
    }
    let c = &data.claims;
    let mismatches: Vec<serde_json::Value> = result
        .mismatches
        .iter()
        .map(|m| serde_json::json!({"name": m.name, "expected": m.expected, "found": m.found}))
        .collect();
    for (claim, want) in [
        ("vmattest.vm", serde_json::json!(vm)),
        ("vmattest.config-root", serde_json::json!(result.root)),
        ("vmattest.config-ok", serde_json::json!(result.ok)),
        ("vmattest.mismatches", serde_json::json!(mismatches)),
    ] {
        if c.get(claim) != Some(&want) {
            return Err(refused(format!(
                "claim {claim} is {}, the answer says {want}",
                c.get(claim)
                    .map_or_else(|| "absent".into(), ToString::to_string)
            )));
        }
    }
    Ok(())
}
