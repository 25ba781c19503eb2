//! EAR (draft-ietf-rats-ear) attestation results as JWTs, signed Ed25519 (RFC 8037, named as
//! RFC 9864 fully specifies it, or `EdDSA` for older libraries) or ES384 by the server's own
//! key, so any standard JWT library can check them.
//!
//! JWS needs no extra domain tag: the protected header names the algorithm and type, and the
//! key signs nothing else but webhook bodies, which carry their own prefix.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::{Value, json};
use vmattest_core::attest::Appraisal;
use vmattest_sign::{PublicKey, SecretKey, SigAlg, Signer};

use crate::error::ServerError;

pub const EAR_PROFILE: &str = "tag:github.com,2023:veraison/ear";
/// Prefix of every webhook body signature, so it can never pass for an EAR.
pub const WEBHOOK_DOMAIN: &[u8] = b"vmattest webhook v1\0";

/// How the JOSE `alg` of an Ed25519 key is spelled in JWT headers and JWKs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AlgNames {
    /// RFC 9864's fully-specified `Ed25519`.
    #[default]
    FullySpecified,
    /// RFC 8037's polymorphic `EdDSA`, for JWT libraries that predate RFC 9864.
    Legacy,
}

impl AlgNames {
    /// The JOSE name of a signature algorithm.
    pub fn jose(self, alg: SigAlg) -> &'static str {
        match (alg, self) {
            (SigAlg::EcdsaP384, _) => "ES384",
            (_, AlgNames::FullySpecified) => "Ed25519",
            (_, AlgNames::Legacy) => "EdDSA",
        }
    }
}

/// The key type of an EAR key by its command-line name: `ed25519` or `p384`.
pub fn key_alg(name: &str) -> Option<SigAlg> {
    match name {
        "ed25519" => Some(SigAlg::Ed25519),
        "p384" => Some(SigAlg::EcdsaP384),
        _ => None,
    }
}

/// The public JWK of an EAR key (`kid` is the key's vmattest key id).
pub fn jwk(key: &PublicKey, names: AlgNames) -> Value {
    let raw = key.raw();
    let kid = key.key_id().to_hex();
    let alg = names.jose(key.alg());
    match key.alg() {
        SigAlg::EcdsaP384 if raw.len() == 97 => json!({
            "kty": "EC", "crv": "P-384", "kid": kid, "alg": alg, "use": "sig",
            "x": B64.encode(&raw[1..49]), "y": B64.encode(&raw[49..97]),
        }),
        _ => json!({
            "kty": "OKP", "crv": "Ed25519", "kid": kid, "alg": alg, "use": "sig",
            "x": B64.encode(raw),
        }),
    }
}

#[derive(Debug)]
pub struct EarSigner {
    key: SecretKey,
    kid: String,
    names: AlgNames,
}

/// What one appraisal says, for the EAR's submodule.
#[derive(Debug)]
pub struct EarClaims<'a> {
    pub vm: &'a str,
    pub iat: i64,
    pub nonce: &'a [u8],
    pub policy_id: &'a str,
    pub subset: &'a str,
    pub appraisal: &'a Appraisal,
    pub regions: &'a [(String, bool)],
    pub baseline_id: i64,
}

/// The trust vector's claims that were made (not 0), by AR4SI name.
fn vector_claims(v: &vmattest_core::attest::TrustVector) -> serde_json::Map<String, Value> {
    v.claims()
        .iter()
        .filter(|(_, v)| *v != 0)
        .map(|(k, v)| ((*k).to_string(), json!(v)))
        .collect()
}

/// An EAR with one submodule, `name`.
fn ear_claims(iat: i64, nonce: &[u8], name: &str, submod: Value) -> Value {
    json!({
        "eat_profile": EAR_PROFILE,
        "iat": iat,
        "eat_nonce": B64.encode(nonce),
        "ear.verifier-id": {
            "developer": "vmattest",
            "build": concat!("vmattest ", env!("CARGO_PKG_VERSION")),
        },
        "submods": { name: submod },
    })
}

/// What one host appraisal says, for the host EAR's submodule.
#[derive(Debug)]
pub struct HostEarClaims<'a> {
    pub host: &'a str,
    pub group: &'a str,
    pub iat: i64,
    pub nonce: &'a [u8],
    pub vector: &'a vmattest_core::attest::TrustVector,
    pub pcrs: &'a [(u32, [u8; 32])],
    pub mismatches: &'a [String],
}

impl EarSigner {
    /// Loads the key at `path`, or makes an Ed25519 (or P-384) key there on first start.
    pub fn load_or_create(
        path: &Path,
        alg: SigAlg,
        names: AlgNames,
    ) -> Result<EarSigner, ServerError> {
        let key_err = |source| ServerError::Key {
            path: path.display().to_string(),
            source: Box::new(source),
        };
        let key = if path.exists() {
            vmattest_sign::keyfile::read_secret_key(path).map_err(key_err)?
        } else {
            let key = SecretKey::generate(alg).map_err(key_err)?;
            vmattest_sign::keyfile::write_secret_key(path, &key).map_err(key_err)?;
            key
        };
        EarSigner::new(key, names)
            .map_err(|e| ServerError::EarKey(format!("{}: {e}", path.display())))
    }

    pub fn new(key: SecretKey, names: AlgNames) -> Result<EarSigner, String> {
        match key.alg() {
            SigAlg::Ed25519 | SigAlg::EcdsaP384 => {}
            other => return Err(format!("expected an ed25519 or p384 key, found {other}")),
        }
        let kid = key.key_id().to_hex();
        Ok(EarSigner { key, kid, names })
    }

    pub fn jose_alg(&self) -> &'static str {
        self.names.jose(self.key.alg())
    }

    pub fn alg(&self) -> SigAlg {
        self.key.alg()
    }

    pub fn public_key(&self) -> PublicKey {
        self.key.public_key()
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn public_pem(&self) -> String {
        self.key.public_key().to_pem()
    }

    pub fn jwk(&self) -> Value {
        jwk(&self.key.public_key(), self.names)
    }

    /// A compact JWS over `claims`.
    pub fn sign_jwt(&self, claims: &Value) -> Result<String, ServerError> {
        let header = json!({ "alg": self.jose_alg(), "typ": "JWT", "kid": self.kid });
        let input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let sig = self
            .key
            .sign(input.as_bytes())
            .map_err(|e| ServerError::Corrupt(format!("EAR signature: {e}")))?;
        Ok(format!("{input}.{}", B64.encode(sig)))
    }

    pub fn ear(&self, c: &EarClaims<'_>) -> Result<String, ServerError> {
        let vector = vector_claims(&c.appraisal.vector);
        let regions: serde_json::Map<String, Value> = c
            .regions
            .iter()
            .map(|(n, m)| (n.clone(), json!(m)))
            .collect();
        let submod = json!({
            "ear.status": c.appraisal.status.name(),
            "ear.trustworthiness-vector": vector,
            "ear.appraisal-policy-id": format!("vmattest:policy:{}", c.policy_id),
            "vmattest.score": c.appraisal.score,
            "vmattest.subset": c.subset,
            "vmattest.baseline-id": c.baseline_id,
            "vmattest.regions": regions,
        });
        self.sign_jwt(&ear_claims(c.iat, c.nonce, c.vm, submod))
    }

    /// A host EAR: the submodule `host:NAME` says how the host's quote compared with its
    /// group's host policy.
    pub fn host_ear(&self, c: &HostEarClaims<'_>) -> Result<String, ServerError> {
        let vector = vector_claims(c.vector);
        let pcrs: serde_json::Map<String, Value> = c
            .pcrs
            .iter()
            .map(|(i, v)| (i.to_string(), json!(hex::encode(v))))
            .collect();
        let submod = json!({
            "ear.status": c.vector.status().name(),
            "ear.trustworthiness-vector": vector,
            "ear.appraisal-policy-id": format!("vmattest:host-policy:{}", c.group),
            "vmattest.pcrs": pcrs,
            "vmattest.mismatches": c.mismatches,
        });
        let name = format!("host:{}", c.host);
        self.sign_jwt(&ear_claims(c.iat, c.nonce, &name, submod))
    }

    /// Signature over a webhook body: base64url of the key's signature of domain || body.
    pub fn sign_webhook(&self, body: &[u8]) -> Result<String, ServerError> {
        let mut msg = Vec::with_capacity(WEBHOOK_DOMAIN.len() + body.len());
        msg.extend_from_slice(WEBHOOK_DOMAIN);
        msg.extend_from_slice(body);
        let sig = self
            .key
            .sign(&msg)
            .map_err(|e| ServerError::Corrupt(format!("webhook signature: {e}")))?;
        Ok(B64.encode(sig))
    }
}
