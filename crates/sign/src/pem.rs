//! PEM framing (RFC 7468) and the PKCS#8 / SPKI dispatch on algorithm OIDs.
//!
//! Encoding is done here by hand from fixed DER templates (see each algorithm module and
//! docs/KEYS.md), so it cannot fail; decoding goes through `pem-rfc7468`, `pkcs8`/`spki` and
//! the algorithm crates' own key parsers.

use pkcs8::der::Decode as _;
use pkcs8::{ObjectIdentifier, PrivateKeyInfoRef, SubjectPublicKeyInfoRef};
use vmattest_core::sig::SigAlg;
use zeroize::Zeroizing;

use crate::{SignError, ecdsa_p384, ed25519, ml_dsa_65};

pub(crate) const PRIVATE_LABEL: &str = "PRIVATE KEY";
pub(crate) const PUBLIC_LABEL: &str = "PUBLIC KEY";

/// id-Ed25519 (RFC 8410).
pub(crate) const OID_ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
/// id-ecPublicKey (RFC 5480).
pub(crate) const OID_EC_PUBLIC_KEY: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
/// secp384r1 (RFC 5480).
pub(crate) const OID_SECP384R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
/// id-ml-dsa-65 (NIST CSOR, FIPS 204).
pub(crate) const OID_ML_DSA_65: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.3.18");

/// Which kind of PEM document a caller expects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Private,
    Public,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Private => PRIVATE_LABEL,
            Kind::Public => PUBLIC_LABEL,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Kind::Private => "a private key (PEM label PRIVATE KEY)",
            Kind::Public => "a public key (PEM label PUBLIC KEY)",
        }
    }

    fn other(self) -> Kind {
        match self {
            Kind::Private => Kind::Public,
            Kind::Public => Kind::Private,
        }
    }
}

/// One decoded PEM block. The DER of a private key is secret, so it is zeroized on drop.
pub(crate) struct Block {
    pub(crate) der: Zeroizing<Vec<u8>>,
}

/// Splits `text` into PEM blocks, all of which must carry the label for `kind`.
///
/// Only whitespace may stand between, before and after the blocks.
pub(crate) fn decode_blocks(text: &str, kind: Kind, origin: &str) -> Result<Vec<Block>, SignError> {
    const BEGIN: &str = "-----BEGIN ";
    const END: &str = "-----END ";
    const DASHES: &str = "-----";

    let not_pem = |found: String| SignError::NotPem {
        origin: origin.to_owned(),
        found,
    };
    let mut blocks = Vec::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start();
        if rest.is_empty() {
            break;
        }
        let index = blocks.len() + 1;
        if !rest.starts_with(BEGIN) {
            return Err(not_pem(if blocks.is_empty() {
                "no -----BEGIN line at the start".to_owned()
            } else {
                format!(
                    "text other than whitespace after PEM block {}",
                    blocks.len()
                )
            }));
        }
        // The block runs from BEGIN through the closing dashes of its END line.
        let (head, after_end) = rest
            .split_once(END)
            .ok_or_else(|| not_pem(format!("PEM block {index} without an -----END line")))?;
        let (end_label, _) = after_end
            .split_once(DASHES)
            .ok_or_else(|| not_pem(format!("PEM block {index} with an unterminated END line")))?;
        let block_len = head.len() + END.len() + end_label.len() + DASHES.len();
        let (block, tail) = rest
            .split_at_checked(block_len)
            .ok_or_else(|| not_pem(format!("PEM block {index} with a malformed END line")))?;
        rest = tail;

        let label = pem_rfc7468::decode_label(block.as_bytes()).map_err(|source| {
            SignError::MalformedPem {
                origin: origin.to_owned(),
                index,
                source,
            }
        })?;
        if label != kind.label() {
            return Err(if label == kind.other().label() {
                SignError::WrongKeyType {
                    origin: origin.to_owned(),
                    expected: kind.describe(),
                    found: kind.other().describe().to_owned(),
                }
            } else {
                SignError::UnsupportedPemLabel {
                    origin: origin.to_owned(),
                    expected: kind.label(),
                    found: label.to_owned(),
                }
            });
        }
        let (_, der) = pem_rfc7468::decode_vec(block.as_bytes()).map_err(|source| {
            SignError::MalformedPem {
                origin: origin.to_owned(),
                index,
                source,
            }
        })?;
        blocks.push(Block {
            der: Zeroizing::new(der),
        });
    }
    if blocks.is_empty() {
        return Err(not_pem(if text.trim().is_empty() {
            "empty text".to_owned()
        } else {
            "no PEM block".to_owned()
        }));
    }
    Ok(blocks)
}

/// The exact length of [`encode_into`]'s output, so secret output never reallocates.
pub(crate) fn encoded_len(label: &str, der_len: usize) -> usize {
    let b64 = der_len.div_ceil(3) * 4;
    let lines = b64.div_ceil(64);
    ("-----BEGIN -----\n".len() + label.len())
        + b64
        + lines
        + ("-----END -----\n".len() + label.len())
}

/// Appends one PEM block: 64-column base64, LF line endings, a final LF.
pub(crate) fn encode_into(out: &mut String, label: &str, der: &[u8]) {
    use base64ct::{Base64, Encoding as _};

    let b64 = Zeroizing::new(Base64::encode_string(der));
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    for (i, c) in b64.chars().enumerate() {
        if i > 0 && i % 64 == 0 {
            out.push('\n');
        }
        out.push(c);
    }
    if !b64.is_empty() {
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
}

/// Builds `prefix || body` into a zeroizing buffer of exactly the right capacity.
pub(crate) fn secret_der(parts: &[&[u8]]) -> Zeroizing<Vec<u8>> {
    let len = parts.iter().map(|p| p.len()).sum();
    let mut der = Zeroizing::new(Vec::with_capacity(len));
    for part in parts {
        der.extend_from_slice(part);
    }
    der
}

/// One single-algorithm private key decoded from a PKCS#8 block.
pub(crate) enum Component {
    Ed25519(ed25519::Secret),
    P384(ecdsa_p384::Secret),
    MlDsa65(ml_dsa_65::Secret),
}

impl Component {
    pub(crate) fn alg(&self) -> SigAlg {
        match self {
            Component::Ed25519(_) => SigAlg::Ed25519,
            Component::P384(_) => SigAlg::EcdsaP384,
            Component::MlDsa65(_) => SigAlg::MlDsa65,
        }
    }
}

/// Decodes one PKCS#8 `PrivateKeyInfo` and dispatches on its algorithm OID.
pub(crate) fn decode_private(
    block: &Block,
    index: usize,
    origin: &str,
) -> Result<Component, SignError> {
    let pki =
        PrivateKeyInfoRef::from_der(&block.der).map_err(|source| SignError::MalformedDer {
            origin: origin.to_owned(),
            index,
            expected: "PKCS#8 PrivateKeyInfo",
            source,
        })?;
    let oid = pki.algorithm.oid;
    if oid == OID_ED25519 {
        ed25519::from_pkcs8(pki, origin).map(Component::Ed25519)
    } else if oid == OID_EC_PUBLIC_KEY {
        check_curve(pki.algorithm.parameters_oid().ok(), origin)?;
        ecdsa_p384::from_pkcs8(pki, origin).map(Component::P384)
    } else if oid == OID_ML_DSA_65 {
        ml_dsa_65::from_pkcs8(pki, origin).map(Component::MlDsa65)
    } else {
        Err(SignError::UnknownAlgorithm {
            origin: origin.to_owned(),
            oid: oid.to_string(),
        })
    }
}

/// Decodes one `SubjectPublicKeyInfo` into its algorithm and raw public key.
pub(crate) fn decode_public(
    block: &Block,
    index: usize,
    origin: &str,
) -> Result<(SigAlg, Vec<u8>), SignError> {
    let spki = SubjectPublicKeyInfoRef::from_der(&block.der).map_err(|source| {
        SignError::MalformedDer {
            origin: origin.to_owned(),
            index,
            expected: "SubjectPublicKeyInfo",
            source,
        }
    })?;
    let oid = spki.algorithm.oid;
    if oid == OID_ED25519 {
        ed25519::raw_from_spki(spki, origin).map(|raw| (SigAlg::Ed25519, raw))
    } else if oid == OID_EC_PUBLIC_KEY {
        check_curve(spki.algorithm.parameters_oid().ok(), origin)?;
        ecdsa_p384::raw_from_spki(spki, origin).map(|raw| (SigAlg::EcdsaP384, raw))
    } else if oid == OID_ML_DSA_65 {
        ml_dsa_65::raw_from_spki(spki, origin).map(|raw| (SigAlg::MlDsa65, raw))
    } else {
        Err(SignError::UnknownAlgorithm {
            origin: origin.to_owned(),
            oid: oid.to_string(),
        })
    }
}

fn check_curve(curve: Option<ObjectIdentifier>, origin: &str) -> Result<(), SignError> {
    match curve {
        Some(c) if c == OID_SECP384R1 => Ok(()),
        Some(c) => Err(SignError::UnsupportedCurve {
            origin: origin.to_owned(),
            found: c.to_string(),
        }),
        None => Err(SignError::UnsupportedCurve {
            origin: origin.to_owned(),
            found: "no named curve".to_owned(),
        }),
    }
}

/// The subject public key bits of an SPKI, which must be a whole number of bytes.
pub(crate) fn spki_bits<'a>(
    spki: &SubjectPublicKeyInfoRef<'a>,
    alg: SigAlg,
    origin: &str,
) -> Result<&'a [u8], SignError> {
    spki.subject_public_key
        .as_bytes()
        .ok_or_else(|| SignError::InvalidKey {
            origin: origin.to_owned(),
            alg,
            kind: "public key",
            expected: "a BIT STRING with no unused bits",
        })
}

/// The raw key of an SPKI whose algorithm takes no parameters, after `check` accepts it
/// (`check` returns what was expected when it refuses).
pub(crate) fn unparameterised_raw(
    spki: &SubjectPublicKeyInfoRef<'_>,
    alg: SigAlg,
    origin: &str,
    check: impl FnOnce(&[u8]) -> Result<(), &'static str>,
) -> Result<Vec<u8>, SignError> {
    let invalid = |expected| SignError::InvalidKey {
        origin: origin.to_owned(),
        alg,
        kind: "public key",
        expected,
    };
    if spki.algorithm.parameters.is_some() {
        return Err(invalid("no algorithm parameters"));
    }
    let bits = spki_bits(spki, alg, origin)?;
    check(bits).map_err(invalid)?;
    Ok(bits.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_len_is_exact() {
        for n in [0usize, 1, 2, 3, 47, 48, 49, 185, 1974, 3000] {
            let der = vec![0xa5u8; n];
            let mut out = String::new();
            encode_into(&mut out, PUBLIC_LABEL, &der);
            assert_eq!(out.len(), encoded_len(PUBLIC_LABEL, n), "der length {n}");
            if n > 0 {
                let (label, back) = pem_rfc7468::decode_vec(out.as_bytes()).unwrap();
                assert_eq!(label, PUBLIC_LABEL);
                assert_eq!(back, der);
            }
        }
    }

    #[test]
    fn text_outside_blocks_is_refused() {
        let mut out = String::new();
        encode_into(&mut out, PUBLIC_LABEL, &[1, 2, 3]);
        let err = decode_blocks(&format!("hello\n{out}"), Kind::Public, "t").err();
        assert!(matches!(err, Some(SignError::NotPem { .. })), "{err:?}");
        let err = decode_blocks(&format!("{out}trailing"), Kind::Public, "t").err();
        assert!(matches!(err, Some(SignError::NotPem { .. })), "{err:?}");
        let cut = out.replace("-----END PUBLIC KEY-----\n", "");
        let err = decode_blocks(&cut, Kind::Public, "t").err();
        assert!(matches!(err, Some(SignError::NotPem { .. })), "{err:?}");
        assert_eq!(
            decode_blocks(&format!("\n\n{out}\r\n"), Kind::Public, "t")
                .unwrap()
                .len(),
            1
        );
    }
}
