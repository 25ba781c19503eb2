//! TPM structures from public data (`tpm verify-quote`, `tpm verify-key`, host registration):
//! the first byte picks TPMS_ATTEST, TPMT_PUBLIC, signature, SPKI/SEC1 key or a full quote
//! check against the attestation key of the seeds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmattest_fuzz::select;
use vmattest_quote::{
    PublicKey, Signature, format_selection, parse_attest, parse_ecc_public, parse_public_ecc_p256,
    parse_signature, verify_certify, verify_quote,
};

fn ak() -> Option<PublicKey> {
    parse_public_ecc_p256(include_bytes!("../seeds/keys/ak.tpmt")).ok()
}

fuzz_target!(|data: &[u8]| {
    let (case, rest) = select(data);
    match case % 5 {
        0 => {
            if let Ok(a) = parse_attest(rest) {
                let _ = a.attest_type();
                if let vmattest_quote::Attested::Quote { pcr_select, .. } = &a.attested {
                    let _ = format_selection(pcr_select);
                    for s in pcr_select {
                        let _ = s.indices();
                    }
                }
            }
        }
        1 => {
            if let Ok(k) = parse_public_ecc_p256(rest) {
                let _ = (k.name(), k.object_attributes(), k.auth_policy());
                let _ = k.is_restricted_signing_key();
                let sec1 = k.to_sec1_uncompressed();
                let again = PublicKey::from_sec1(&sec1).expect("a parsed key's point parses");
                assert_eq!(again.to_sec1_uncompressed(), sec1);
            }
            let _ = parse_ecc_public(rest);
            let _ = PublicKey::from_tpm2b_public(rest);
        }
        2 => {
            let _ = parse_signature(rest);
            if let Ok(s) = Signature::from_raw(rest) {
                let raw = s.to_raw();
                assert_eq!(&raw[..], rest, "a raw signature re-encodes differently");
            }
        }
        3 => {
            let _ = PublicKey::from_sec1(rest);
            if let Ok(text) = std::str::from_utf8(rest) {
                let _ = PublicKey::from_spki_pem(text);
            }
        }
        _ => {
            // A signature (64 bytes, r || s) then the attest bytes, checked as a quote and as a
            // certification under the seeds' attestation key, with the attest's own nonce.
            let Some(ak) = ak() else { return };
            if rest.len() < 64 {
                return;
            }
            let (sig, attest) = rest.split_at(64);
            let Ok(sig) = Signature::from_raw(sig) else {
                return;
            };
            // Only attest bytes that parse: the verifier checks the signature (one P-256
            // verification, most of this target's time) before it parses, so any other input
            // is refused after that check.
            let Ok(parsed) = parse_attest(attest) else {
                return;
            };
            let nonce = parsed.extra_data;
            match parsed.attested {
                vmattest_quote::Attested::Quote { .. } => {
                    let _ = verify_quote(
                        &ak,
                        attest,
                        &sig,
                        &nonce,
                        &[(0, [0; 32]), (7, [0; 32]), (16, [0; 32])],
                    );
                }
                vmattest_quote::Attested::Certify { .. } => {
                    let _ = verify_certify(&ak, attest, &sig, &nonce, &[0, 0x0b]);
                }
            }
        }
    }
});
