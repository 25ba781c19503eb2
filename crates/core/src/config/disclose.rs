//! The private opening (every parameter with its salt) and single-parameter disclosures.

use core::fmt;

use crate::alg::{Digest, HashAlg};
use crate::chain::read_digest;
use crate::record::{Signed, UnixTime};
use crate::sig::KeyId;
use crate::wire::{Kind, Reader, WireError, Writer};

use super::statement::{ConfigStatement, SignedConfigStatement};
use super::tree::{leaf_digest, path_len, path_of, root_from_path, root_of, tree_leaf};
use super::{
    ConfigError, ConfigParam, MAX_NAME_LEN, MAX_PARAMS, MAX_SALT_LEN, MAX_VALUE_LEN, MIN_SALT_LEN,
    check_param, check_salt, is_valid_param_name,
};

/// First bytes of an encoded opening.
pub const OPENING_MAGIC: &[u8] = b"vmattest config-opening v1\0";
/// Largest encoded opening: the magic, the count and 65536 parameters at their limits.
pub const MAX_OPENING_LEN: u64 = OPENING_MAGIC.len() as u64
    + 4
    + MAX_PARAMS as u64
        * (4 + MAX_NAME_LEN as u64 + 4 + MAX_VALUE_LEN as u64 + 4 + MAX_SALT_LEN as u64);
/// Largest signed statement a disclosure may embed (a signed object of kind 2; eight
/// signatures of 8192 bytes fit).
pub const MAX_SIGNED_STATEMENT_LEN: usize = 96 * 1024;

/// Every parameter with its salt, in name order: what the measuring host keeps privately
/// (store it like a private key, 0600). Its `Debug` shows names only.
#[derive(Clone, PartialEq, Eq)]
pub struct ConfigOpening {
    params: Vec<(ConfigParam, Vec<u8>)>,
}

impl fmt::Debug for ConfigOpening {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigOpening")
            .field(
                "names",
                &self
                    .params
                    .iter()
                    .map(|(p, _)| p.name.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl ConfigOpening {
    /// `params` is validated and in strictly increasing name order.
    pub(super) fn from_sorted(params: Vec<(ConfigParam, Vec<u8>)>) -> ConfigOpening {
        ConfigOpening { params }
    }

    /// The parameters and their salts, in name order.
    pub fn params(&self) -> &[(ConfigParam, Vec<u8>)] {
        &self.params
    }

    pub fn len(&self) -> usize {
        self.params.len()
    }

    /// Always false: an opening holds at least one parameter.
    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
    }

    fn leaves(&self) -> Vec<Digest> {
        self.params
            .iter()
            .map(|(p, s)| tree_leaf(&leaf_digest(&p.name, &p.value, s)))
            .collect()
    }

    /// The config root (SHA-256).
    pub fn root(&self) -> Digest {
        root_of(&self.leaves())
    }

    /// The statement to sign for this configuration.
    pub fn statement(
        &self,
        vm: &str,
        time: UnixTime,
        quote_nonce: &[u8],
        key_ids: Vec<KeyId>,
    ) -> ConfigStatement {
        ConfigStatement {
            vm: vm.to_owned(),
            time,
            root: self.root(),
            count: u32::try_from(self.params.len()).unwrap_or(u32::MAX),
            quote_nonce: quote_nonce.to_vec(),
            key_ids,
        }
    }

    /// Discloses one parameter: its value and salt and the path to the root.
    pub fn disclose(&self, name: &str) -> Result<Disclosure, ConfigError> {
        let index = self
            .params
            .binary_search_by(|(p, _)| p.name.as_str().cmp(name))
            .map_err(|_| ConfigError::Unknown(name.to_owned()))?;
        let (p, salt) = &self.params[index];
        Ok(Disclosure {
            name: p.name.clone(),
            value: p.value.clone(),
            salt: salt.clone(),
            index: index as u64,
            count: self.params.len() as u64,
            path: path_of(&self.leaves(), index),
        })
    }

    /// Discloses `name` under `statement` and encodes the result (kind 11), refusing a
    /// statement whose root or count is not this opening's.
    pub fn disclose_signed(
        &self,
        name: &str,
        statement: &SignedConfigStatement,
    ) -> Result<Vec<u8>, ConfigError> {
        let d = self.disclose(name)?;
        d.verify(statement.value())?;
        d.encode(statement)
    }

    /// The canonical encoding (see FORMAT.md); it holds every salt, so keep it private.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.raw(OPENING_MAGIC)
            .u32(u32::try_from(self.params.len()).unwrap_or(u32::MAX));
        for (p, s) in &self.params {
            w.bytes(p.name.as_bytes())
                .bytes(p.value.as_bytes())
                .bytes(s);
        }
        w.finish()
    }

    pub fn decode(bytes: &[u8]) -> Result<ConfigOpening, ConfigError> {
        let len = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
        if len > MAX_OPENING_LEN {
            return Err(ConfigError::Count {
                expected: format!("a config opening of at most {MAX_OPENING_LEN} bytes"),
                found: bytes.len(),
            });
        }
        let mut r = Reader::new(bytes);
        let magic = r.take("magic", OPENING_MAGIC.len())?;
        if magic != OPENING_MAGIC {
            return Err(r
                .bad(
                    "magic",
                    0,
                    "expected \"vmattest config-opening v1\\0\"",
                    String::from_utf8_lossy(magic),
                )
                .into());
        }
        let at = r.offset();
        let n = r.len32("param count", MAX_PARAMS)?;
        if n == 0 {
            return Err(r.bad("param count", at, "expected 1 to 65536", n).into());
        }
        let mut params: Vec<(ConfigParam, Vec<u8>)> = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            let at = r.offset();
            let name = read_name(&mut r)?;
            if let Some((last, _)) = params.last()
                && last.name >= name
            {
                return Err(r
                    .bad(
                        "param name",
                        at,
                        "expected names in strictly increasing order",
                        format!("{name:?} after {:?}", last.name),
                    )
                    .into());
            }
            let value = r.string("param value", MAX_VALUE_LEN)?.to_owned();
            let salt = read_salt(&mut r)?;
            params.push((ConfigParam::new(name, value), salt));
        }
        let count = r.remaining();
        if count != 0 {
            return Err(r
                .bad(
                    "end",
                    r.offset(),
                    "expected the end of the config opening",
                    format!("{count} more bytes"),
                )
                .into());
        }
        Ok(ConfigOpening { params })
    }
}

fn read_name(r: &mut Reader<'_>) -> Result<String, WireError> {
    let at = r.offset();
    let name = r.string("param name", MAX_NAME_LEN)?;
    if !is_valid_param_name(name) {
        return Err(r.bad(
            "param name",
            at,
            "expected 1 to 128 characters of [a-z0-9._-]",
            format!("{name:?}"),
        ));
    }
    Ok(name.to_owned())
}

fn read_salt(r: &mut Reader<'_>) -> Result<Vec<u8>, WireError> {
    let at = r.offset();
    let salt = r.bytes("salt", MAX_SALT_LEN)?;
    if salt.len() < MIN_SALT_LEN {
        return Err(r.bad(
            "salt",
            at,
            "expected 16 to 64 bytes",
            format!("{} bytes", salt.len()),
        ));
    }
    Ok(salt.to_vec())
}

/// One parameter with its salt and its path to the config root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disclosure {
    pub name: String,
    pub value: String,
    pub salt: Vec<u8>,
    /// Position of the parameter in name order.
    pub index: u64,
    /// Number of parameters in the tree.
    pub count: u64,
    /// Sibling digests from the leaf up (SHA-256).
    pub path: Vec<Digest>,
}

impl Disclosure {
    pub fn param(&self) -> ConfigParam {
        ConfigParam::new(self.name.clone(), self.value.clone())
    }

    /// Recomputes the config root, refusing a bad name, an oversize value, a salt outside 16
    /// to 64 bytes, an index at or beyond the count, a count above 65536 and a path of the
    /// wrong length for (index, count).
    pub fn root(&self) -> Result<Digest, ConfigError> {
        let index = usize::try_from(self.index).unwrap_or(usize::MAX);
        check_param(index, &self.param())?;
        check_salt(index, &self.name, &self.salt)?;
        let leaf = leaf_digest(&self.name, &self.value, &self.salt);
        root_from_path(&leaf, self.index, self.count, &self.path)
    }

    /// Checks this disclosure against `statement` (count and root). Signatures are not
    /// checked here.
    pub fn verify(&self, statement: &ConfigStatement) -> Result<ConfigParam, ConfigError> {
        if self.count != u64::from(statement.count) {
            return Err(ConfigError::DisclosureMismatch {
                field: "count",
                expected: format!("the statement's {}", statement.count),
                found: self.count.to_string(),
            });
        }
        let root = self.root()?;
        if !root.ct_eq(&statement.root) {
            return Err(ConfigError::DisclosureMismatch {
                field: "root",
                expected: format!("the statement's {}", statement.root),
                found: root.to_string(),
            });
        }
        Ok(self.param())
    }

    /// Encodes this disclosure with `statement` embedded (kind 11). Does not verify; see
    /// [`ConfigOpening::disclose_signed`].
    pub fn encode(&self, statement: &SignedConfigStatement) -> Result<Vec<u8>, ConfigError> {
        let index = usize::try_from(self.index).unwrap_or(usize::MAX);
        check_param(index, &self.param())?;
        check_salt(index, &self.name, &self.salt)?;
        let expected = path_len(self.index, self.count).ok_or_else(|| ConfigError::Disclosure {
            field: "index",
            expected: format!("below the count {}, which is 1 to {MAX_PARAMS}", self.count),
            found: self.index.to_string(),
        })?;
        if self.path.len() != expected {
            return Err(ConfigError::Disclosure {
                field: "path",
                expected: format!("{expected} digests"),
                found: self.path.len().to_string(),
            });
        }
        if let Some(d) = self.path.iter().find(|d| d.alg() != HashAlg::Sha256) {
            return Err(ConfigError::Disclosure {
                field: "path",
                expected: "sha256 digests".into(),
                found: d.alg().to_string(),
            });
        }
        let signed = statement.encode()?;
        if signed.len() > MAX_SIGNED_STATEMENT_LEN {
            return Err(ConfigError::Disclosure {
                field: "signed statement",
                expected: format!("at most {MAX_SIGNED_STATEMENT_LEN} bytes"),
                found: signed.len().to_string(),
            });
        }
        let mut w = Writer::new();
        w.bytes(self.name.as_bytes())
            .bytes(self.value.as_bytes())
            .bytes(&self.salt)
            .u64(self.index)
            .u64(self.count)
            .u8(u8::try_from(self.path.len()).unwrap_or(u8::MAX));
        for d in &self.path {
            w.raw(d.as_bytes());
        }
        w.bytes(&signed);
        Ok(w.envelope(Kind::ConfigDisclosure))
    }

    /// Decodes a disclosure and its embedded signed statement, refusing truncation, trailing
    /// bytes, oversize fields, an index outside the tree and a path of the wrong length.
    pub fn decode(bytes: &[u8]) -> Result<(Disclosure, SignedConfigStatement), ConfigError> {
        let mut r = crate::wire::open(bytes, Kind::ConfigDisclosure)?;
        let name = read_name(&mut r)?;
        let value = r.string("param value", MAX_VALUE_LEN)?.to_owned();
        let salt = read_salt(&mut r)?;
        let at = r.offset();
        let index = r.u64("index")?;
        let count_at = r.offset();
        let count = r.u64("count")?;
        if count == 0 || count > MAX_PARAMS as u64 {
            return Err(r
                .bad("count", count_at, "expected 1 to 65536", count)
                .into());
        }
        let expected = path_len(index, count)
            .ok_or_else(|| r.bad("index", at, "expected below the count", index))?;
        let at = r.offset();
        let n = usize::from(r.u8("path length")?);
        if n != expected {
            return Err(r
                .bad(
                    "path length",
                    at,
                    "expected the length the index and count give",
                    format!("{n}, not {expected}"),
                )
                .into());
        }
        let mut path = Vec::with_capacity(n);
        for _ in 0..n {
            path.push(read_digest(&mut r, HashAlg::Sha256, "path digest")?);
        }
        let signed = r.bytes("signed statement", MAX_SIGNED_STATEMENT_LEN)?;
        let statement = Signed::<ConfigStatement>::decode(signed)?;
        r.finish(Kind::ConfigDisclosure)?;
        Ok((
            Disclosure {
                name,
                value,
                salt,
                index,
                count,
                path,
            },
            statement,
        ))
    }
}

/// Decodes a disclosure (kind 11) and checks that its path leads to the embedded statement's
/// root and that its count is the statement's.
///
/// The statement's signatures are NOT checked: the caller must verify the returned
/// [`SignedConfigStatement`] against trusted keys (the `sign` crate's `verify_signed`) before
/// believing the parameter.
pub fn verify_disclosure(
    bytes: &[u8],
) -> Result<(ConfigParam, SignedConfigStatement), ConfigError> {
    let (d, statement) = Disclosure::decode(bytes)?;
    let param = d.verify(statement.value())?;
    Ok((param, statement))
}
