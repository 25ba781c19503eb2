//! The config statement (kind 10): a VM's config root at an instant, signed by named keys.

use crate::alg::{Digest, HashAlg};
use crate::chain::{MAX_NAME_LEN as MAX_VM_LEN, is_valid_name, read_digest};
use crate::record::{
    RecordError, Signable, Signed, UnixTime, check_key_ids, read_key_ids, read_time, write_key_ids,
};
use crate::sig::KeyId;
use crate::wire::{HEADER_LEN, Kind, WireError, Writer};

use super::MAX_PARAMS;

/// Longest quote nonce (the TPM's qualifying data is at most 64 bytes).
pub const MAX_QUOTE_NONCE_LEN: usize = 64;

/// What the measuring host signs: the config root of a VM at `time`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigStatement {
    /// The VM's name (the chain name rule: 1 to 255 characters of `[A-Za-z0-9._-]`, not
    /// starting with '.').
    pub vm: String,
    pub time: UnixTime,
    /// The SHA-256 config root.
    pub root: Digest,
    /// Number of parameters in the tree (1 to 65536).
    pub count: u32,
    /// Optional binding to a TPM quote: the quote's qualifying data, or empty.
    pub quote_nonce: Vec<u8>,
    pub key_ids: Vec<KeyId>,
}

pub type SignedConfigStatement = Signed<ConfigStatement>;

fn bad(field: &'static str, offset: usize, expected: &'static str, found: String) -> RecordError {
    RecordError::Wire(WireError::BadValue {
        field,
        offset,
        expected,
        found,
    })
}

const VM_EXPECTED: &str = "expected 1 to 255 characters of [A-Za-z0-9._-], not starting with '.'";
const COUNT_EXPECTED: &str = "expected 1 to 65536";

impl Signable for ConfigStatement {
    const KIND: Kind = Kind::ConfigStatement;

    fn encode(&self) -> Result<Vec<u8>, RecordError> {
        check_key_ids(&self.key_ids)?;
        // Offsets in these errors are where the field would sit in the object.
        if !is_valid_name(&self.vm, MAX_VM_LEN) {
            return Err(bad("vm", HEADER_LEN, VM_EXPECTED, format!("{:?}", self.vm)));
        }
        let at = HEADER_LEN + 4 + self.vm.len() + 12;
        if self.root.alg() != HashAlg::Sha256 {
            return Err(bad(
                "root algorithm",
                at,
                "expected 2 (sha256)",
                self.root.alg().id().to_string(),
            ));
        }
        if self.count == 0 || self.count as usize > MAX_PARAMS {
            return Err(bad(
                "param count",
                at + 1 + 32,
                COUNT_EXPECTED,
                self.count.to_string(),
            ));
        }
        if self.quote_nonce.len() > MAX_QUOTE_NONCE_LEN {
            return Err(RecordError::Count {
                what: "quote nonce bytes",
                max: MAX_QUOTE_NONCE_LEN,
                found: self.quote_nonce.len(),
            });
        }
        if self.time.nanos >= 1_000_000_000 {
            return Err(bad(
                "time nanoseconds",
                HEADER_LEN + 4 + self.vm.len() + 8,
                "expected below 1000000000",
                self.time.nanos.to_string(),
            ));
        }
        let mut w = Writer::new();
        w.bytes(self.vm.as_bytes())
            .u64(self.time.secs)
            .u32(self.time.nanos)
            .u8(self.root.alg().id())
            .raw(self.root.as_bytes())
            .u32(self.count)
            .bytes(&self.quote_nonce);
        write_key_ids(&mut w, &self.key_ids);
        Ok(w.envelope(Kind::ConfigStatement))
    }

    fn decode(bytes: &[u8]) -> Result<ConfigStatement, RecordError> {
        let mut r = crate::wire::open(bytes, Kind::ConfigStatement)?;
        let at = r.offset();
        let vm = r.string("vm", MAX_VM_LEN)?.to_owned();
        if !is_valid_name(&vm, MAX_VM_LEN) {
            return Err(r.bad("vm", at, VM_EXPECTED, format!("{vm:?}")).into());
        }
        let time = read_time(&mut r)?;
        let at = r.offset();
        let alg = r.u8("root algorithm")?;
        if alg != HashAlg::Sha256.id() {
            return Err(r
                .bad("root algorithm", at, "expected 2 (sha256)", alg)
                .into());
        }
        let root = read_digest(&mut r, HashAlg::Sha256, "root")?;
        let at = r.offset();
        let count = r.u32("param count")?;
        if count == 0 || count as usize > MAX_PARAMS {
            return Err(r.bad("param count", at, COUNT_EXPECTED, count).into());
        }
        let quote_nonce = r.bytes("quote nonce", MAX_QUOTE_NONCE_LEN)?.to_vec();
        let key_ids = read_key_ids(&mut r)?;
        r.finish(Kind::ConfigStatement)?;
        Ok(ConfigStatement {
            vm,
            time,
            root,
            count,
            quote_nonce,
            key_ids,
        })
    }

    fn key_ids(&self) -> &[KeyId] {
        &self.key_ids
    }
}
