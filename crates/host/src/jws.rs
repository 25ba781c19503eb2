//! Checks a compact JWS (an EAR or a configuration verdict) under one pinned JWK with a standard
//! JWT library's verifier. The header's `alg` must name the key's own algorithm, in RFC 9864's
//! fully-specified form (`Ed25519`) or the legacy one (`EdDSA`); `none` and HMAC never pass.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum JwsError {
    #[error("key: {0}")]
    Key(String),
    #[error("token: {0}")]
    Token(String),
    #[error("signature does not verify")]
    Signature,
}

/// A verified token's header and claims.
#[derive(Debug)]
pub struct Verified {
    pub header: Value,
    pub claims: Value,
}

fn part(text: &str, what: &str) -> Result<Value, JwsError> {
    let bytes = B64
        .decode(text)
        .map_err(|e| JwsError::Token(format!("{what}: expected base64url, {e}")))?;
    serde_json::from_slice(&bytes).map_err(|e| JwsError::Token(format!("{what}: {e}")))
}

/// Verifies `token` under `jwk` (an OKP Ed25519 or EC P-384 public JWK).
pub fn verify(jwk: &Value, token: &str) -> Result<Verified, JwsError> {
    let field = |name: &str| {
        jwk.get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| JwsError::Key(format!("field {name}: expected a string")))
    };
    let (key, names): (_, &[&str]) = match (field("kty")?, field("crv")?) {
        ("OKP", "Ed25519") => (
            jsonwebtoken::DecodingKey::from_ed_components(field("x")?),
            &["Ed25519", "EdDSA"],
        ),
        ("EC", "P-384") => (
            jsonwebtoken::DecodingKey::from_ec_components(field("x")?, field("y")?),
            &["ES384"],
        ),
        (kty, crv) => {
            return Err(JwsError::Key(format!(
                "expected an OKP Ed25519 or EC P-384 key, found {kty} {crv}"
            )));
        }
    };
    let key = key.map_err(|e| JwsError::Key(e.to_string()))?;
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwsError::Token("expected three dot-separated parts".into()));
    };
    let header = part(h, "header")?;
    let alg = header.get("alg").and_then(Value::as_str).unwrap_or("");
    if !names.contains(&alg) {
        return Err(JwsError::Token(format!(
            "header alg: expected {}, found {alg:?}",
            names.join(" or ")
        )));
    }
    let jose = if alg == "ES384" {
        jsonwebtoken::Algorithm::ES384
    } else {
        jsonwebtoken::Algorithm::EdDSA
    };
    let input = &token[..h.len() + 1 + c.len()];
    match jsonwebtoken::crypto::verify(sig, input.as_bytes(), &key, jose) {
        Ok(true) => Ok(Verified {
            header,
            claims: part(c, "claims")?,
        }),
        Ok(false) => Err(JwsError::Signature),
        Err(e) => Err(JwsError::Token(format!("signature: {e}"))),
    }
}
