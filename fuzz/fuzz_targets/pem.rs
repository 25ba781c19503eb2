//! Key files (PEM; `--pubkey`, `--key`, the server's host registration): the first byte
//! picks public or secret. A parsed key prints as PEM that parses back to the same key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmattest_fuzz::select;
use vmattest_sign::{PublicKey, SecretKey, Signer};

fuzz_target!(|data: &[u8]| {
    let (case, rest) = select(data);
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    if case % 2 == 0 {
        if let Ok(key) = PublicKey::from_pem(text) {
            let again = PublicKey::from_pem(&key.to_pem()).expect("a printed public key parses");
            assert_eq!(again, key);
            let raw = PublicKey::from_raw(key.alg(), key.raw());
            assert!(
                raw.is_ok(),
                "a PEM public key is refused as raw bytes: {raw:?}"
            );
        }
    } else if let Ok(key) = SecretKey::from_pem(text) {
        let again = SecretKey::from_pem(&key.to_pem()).expect("a printed secret key parses");
        assert_eq!(again.public_key(), key.public_key());
    }
});
