//! `vmattest tpm ...`: the host TPM's keys, PCRs, quotes and sealing.

use vmattest_host::quotefile;
use vmattest_host::tpm;

use crate::args::TpmCommand;
use crate::output;

pub fn run(cmd: TpmCommand, json: bool) -> anyhow::Result<()> {
    match cmd {
        TpmCommand::Info => output::report(json, &tpm::info()?),
        TpmCommand::Keygen { out } => {
            let key = tpm::keygen(&out)?;
            let j = serde_json::json!({
                "out": out.display().to_string(), "alg": key.alg().name(), "key_id": key.key_id().to_hex(),
            });
            output::show(json, &j, |_| {
                format!(
                    "TPM signing key {} ({}) -> {}",
                    key.key_id().to_hex(),
                    key.alg().name(),
                    out.display()
                )
            })
        }
        TpmCommand::Ak { out } => {
            let name = hex::encode(tpm::write_ak(&out)?);
            let j = serde_json::json!({"out": out.display().to_string(), "name": name});
            output::show(json, &j, |_| {
                format!("attestation key {name} -> {}", out.display())
            })
        }
        TpmCommand::Extend { pcr, file } => {
            let (digest, value) = tpm::extend_file(pcr, &file)?;
            let (digest, value) = (hex::encode(digest), hex::encode(value));
            let j = serde_json::json!({"pcr": pcr, "extended_with": digest, "value": value});
            output::show(json, &j, |_| {
                format!("PCR {pcr} extended with {digest} -> {value}")
            })
        }
        TpmCommand::Quote { pcr, nonce, out } => {
            let pcrs = tpm::pcr_list(&pcr)?;
            let q = tpm::open()?
                .quote(&pcrs, &tpm::nonce(&nonce)?)
                .map_err(tpm::TpmError::from)?;
            quotefile::write(&out, &q, Vec::new())?;
            let j = serde_json::json!({"out": out.display().to_string(), "pcrs": q.pcrs});
            output::show(json, &j, |_| {
                format!("quote of sha256:{pcr} -> {}", out.display())
            })
        }
        TpmCommand::VerifyKey {
            pubkey,
            ak,
            certify,
        } => {
            let certify = certify.unwrap_or_else(|| tpm::certify_path(&pubkey));
            let (key, name) = quotefile::verify_key(&pubkey, &ak, &certify)?;
            let name = hex::encode(name);
            let j =
                serde_json::json!({"ok": true, "key_id": key.key_id().to_hex(), "tpm_name": name});
            output::show(json, &j, |_| {
                format!(
                    "OK: {} ({}) is a non-exportable key of the TPM whose attestation key is pinned; name {name}",
                    key.key_id().to_hex(),
                    key.alg().name(),
                )
            })
        }
        TpmCommand::VerifyQuote { quote, ak, nonce } => {
            let v = quotefile::verify(&quote, &ak, &tpm::nonce(&nonce)?)?;
            let mut j = serde_json::to_value(&v)?;
            j["ok"] = true.into();
            output::show(json, &j, |_| v.to_string())
        }
        TpmCommand::Seal { pcr, input, out } => {
            let pcrs = tpm::pcr_list(&pcr)?;
            tpm::seal_file(&input, &pcrs, &out)?;
            let j = serde_json::json!({"out": out.display().to_string(), "pcrs": pcrs});
            output::show(json, &j, |_| {
                format!("sealed to sha256:{pcr} -> {}", out.display())
            })
        }
        TpmCommand::Unseal { blob, out } => {
            tpm::unseal_file(&blob, &out)?;
            let j = serde_json::json!({"out": out.display().to_string()});
            output::show(json, &j, |_| {
                format!("unsealed -> {} (mode 0600)", out.display())
            })
        }
    }
}
