//! TPM-backed host keys: the registration carries the AK's certification of the key.

use vmattest_api::TpmBinding;
use vmattest_sign::PublicKey;

pub fn check_binding(key: &PublicKey, binding: &TpmBinding) -> Result<(), String> {
    let ak = hex::decode(&binding.ak).map_err(|_| "tpm.ak is not hex".to_string())?;
    let [tpmt, attest, signature, nonce] = binding.certify.decode()?;
    let cert = vmattest_quote::KeyCertification {
        key: &tpmt,
        attest: &attest,
        signature: &signature,
        nonce: &nonce,
    };
    vmattest_quote::check_key_certification(key.raw(), &ak, &cert)
        .map(|_| ())
        .map_err(|e| e.to_string())
}
