//! Building and signing runtime evidence.

use vmattest_core::attest::{Evidence, Policy, SiteEvidence};
use vmattest_core::class::{Classify, ErrorClass};
use vmattest_core::record::{RecordError, Signed};
use vmattest_sign::{SignError, Signer};

/// The version every evidence names as its agent.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    #[error("evidence")]
    Encode(#[from] RecordError),
    #[error("signing evidence with key {key_id}")]
    Sign {
        key_id: String,
        #[source]
        source: Box<SignError>,
    },
}

impl Classify for EvidenceError {
    /// Evidence too large to encode is input; a signer that fails (a TPM) is the environment.
    fn class(&self) -> ErrorClass {
        match self {
            EvidenceError::Encode(_) => ErrorClass::Input,
            EvidenceError::Sign { .. } => ErrorClass::Environment,
        }
    }
}

/// What an agent measured for one challenge.
#[derive(Debug, Clone)]
pub struct Measured<'a> {
    pub vm: &'a str,
    pub nonce: &'a [u8],
    pub policy: &'a Policy,
    pub subset: &'a str,
    pub measurement: crate::measure::Measurement,
}

/// Names each whole site report by its fingerprint where it is the one the server's challenge
/// says it holds (`known`, hex): the evidence then carries 33 bytes instead of the report.
pub fn name_known_reports(m: &mut crate::measure::Measurement, known: Option<&str>) {
    let Some(known) = known else {
        return;
    };
    let reports = m.regions.iter_mut().map(|r| &mut r.sites);
    for sites in reports.chain(std::iter::once(&mut m.kernel_code_sites)) {
        if let Some(SiteEvidence::Whole(r)) = sites {
            let print = r.fingerprint();
            if print.to_hex() == known {
                *sites = Some(SiteEvidence::Same(print));
            }
        }
    }
}

/// Builds the evidence (timed now) and signs it with `signer`.
pub fn sign_evidence(
    m: Measured<'_>,
    signer: &dyn Signer,
) -> Result<Signed<Evidence>, EvidenceError> {
    let evidence = Evidence {
        vm: m.vm.to_owned(),
        time: vmattest_host::now(),
        nonce: m.nonce.to_vec(),
        alg: m.policy.alg,
        policy_id: m.policy.id(),
        subset: m.subset.to_owned(),
        regions: m.measurement.regions,
        kernel_code: m.measurement.kernel_code,
        kernel_code_sites: m.measurement.kernel_code_sites,
        agent_version: AGENT_VERSION.to_owned(),
        key_ids: vec![signer.key_id()],
    };
    sign(evidence, signer)
}

/// Signs any signable object with one signer, naming it in the object's key ids.
pub fn sign<T: vmattest_core::record::Signable>(
    value: T,
    signer: &dyn Signer,
) -> Result<Signed<T>, EvidenceError> {
    use vmattest_sign::signing::SigningError;
    vmattest_sign::signing::sign(value, &[signer]).map_err(|e| match e {
        SigningError::Record(e) => EvidenceError::Encode(e),
        SigningError::Signer { key_id, source } => EvidenceError::Sign {
            key_id: key_id.to_hex(),
            source,
        },
    })
}

/// The signed evidence's canonical bytes, as posted to the server.
pub fn evidence_bytes(m: Measured<'_>, signer: &dyn Signer) -> Result<Vec<u8>, EvidenceError> {
    Ok(sign_evidence(m, signer)?.encode()?)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use vmattest_core::attest::SignedEvidence;
    use vmattest_core::sig::SigAlg;
    use vmattest_sign::SecretKey;
    use vmattest_sign::record::verify_signed;

    const POLICY: &str =
        "name = \"p\"\n[[region]]\nname = \"a\"\nstart = 0\nlen = 0x2000\nkernel_code = true\n";

    #[test]
    fn signed_evidence_round_trips_and_verifies_with_the_public_key() {
        let policy = Policy::parse(POLICY, None).unwrap();
        let ram = vec![7u8; 0x4000];
        let nonce = [1u8; 32];
        let measurement = crate::measure::measure(ram.as_slice(), &policy, "all", &nonce).unwrap();
        let (regions, kernel_code) = (measurement.regions.clone(), measurement.kernel_code);
        let key = SecretKey::generate(SigAlg::Ed25519).unwrap();
        let bytes = evidence_bytes(
            Measured {
                vm: "web1",
                nonce: &nonce,
                policy: &policy,
                subset: "all",
                measurement,
            },
            &key,
        )
        .unwrap();
        let signed = SignedEvidence::decode(&bytes).unwrap();
        verify_signed(&signed, &[key.public_key()]).unwrap();
        let ev = signed.value();
        assert_eq!(ev.vm, "web1");
        assert_eq!(ev.policy_id, policy.id());
        assert_eq!(ev.regions, regions);
        assert_eq!(ev.kernel_code, kernel_code);
        assert_eq!(ev.agent_version, AGENT_VERSION);
        assert_eq!(ev.key_ids, vec![key.key_id()]);
        let other = SecretKey::generate(SigAlg::Ed25519).unwrap();
        assert!(verify_signed(&signed, &[other.public_key()]).is_err());
        // A flipped byte in the signed object is caught.
        let mut bad = bytes.clone();
        let n = bad.len();
        bad[n / 2] ^= 1;
        assert!(
            SignedEvidence::decode(&bad)
                .map(|s| verify_signed(&s, &[key.public_key()]).is_err())
                .unwrap_or(true)
        );
    }
}
