//! TPM-backed host keys: the registration carries the AK's certification of the key.

use vmattest_api::TpmBinding;
use vmattest_sign::PublicKey;

/// Checks that the AK certified `key`; returns the AK's TPMT_PUBLIC.
pub fn check_binding(key: &PublicKey, binding: &TpmBinding) -> Result<Vec<u8>, String> {
    let ak = hex::decode(&binding.ak).map_err(|_| "tpm.ak is not hex".to_string())?;
    let [tpmt, attest, signature, nonce] = binding.certify.decode()?;
    let cert = vmattest_quote::KeyCertification {
        key: &tpmt,
        attest: &attest,
        signature: &signature,
        nonce: &nonce,
    };
    vmattest_quote::check_key_certification(key.raw(), &ak, &cert)
        .map(|_| ak.clone())
        .map_err(|e| e.to_string())
}
