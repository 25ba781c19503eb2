//! Configuration attestation: a VM's configuration as named parameters in a Merkle tree of
//! salted leaves, so that one parameter can be disclosed with a proof without revealing the
//! others.
//!
//! The measuring host builds a [`ConfigOpening`] (every parameter with its own salt; callers
//! supply the salts), signs a [`ConfigStatement`] over the opening's root, and keeps the opening
//! privately. Later it discloses one parameter as a [`Disclosure`], which carries the signed
//! statement; [`verify_disclosure`] checks the path against the statement's root. Checking the
//! statement's signatures against trusted keys is the caller's job (the `sign` crate's
//! `verify_signed`): the core has no keys.
//!
//! Layouts are in docs/FORMAT.md, "Configuration attestation".

mod disclose;
pub mod reference;
mod statement;
mod tree;

#[cfg(test)]
mod tests;

pub use disclose::{
    ConfigOpening, Disclosure, MAX_OPENING_LEN, MAX_SIGNED_STATEMENT_LEN, OPENING_MAGIC,
    verify_disclosure,
};
pub use reference::{
    MAX_REFERENCE_LEN, Mismatch, Reference, ReferenceError, Rule as ReferenceRule,
};
pub use statement::{ConfigStatement, MAX_QUOTE_NONCE_LEN, SignedConfigStatement};
pub use tree::{LEAF_DOMAIN, MAX_PATH_LEN, leaf_digest, path_len};

use crate::class::{Classify, ErrorClass};
use crate::record::RecordError;
use crate::wire::WireError;

/// Longest parameter name, in bytes.
pub const MAX_NAME_LEN: usize = 128;
/// Longest parameter value, in bytes of UTF-8.
pub const MAX_VALUE_LEN: usize = 64 * 1024;
/// Most parameters in one configuration.
pub const MAX_PARAMS: usize = 65536;
/// Shortest per-parameter salt (128 bits).
pub const MIN_SALT_LEN: usize = 16;
/// Longest per-parameter salt.
pub const MAX_SALT_LEN: usize = 64;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error(transparent)]
    Record(#[from] RecordError),
    /// `index` is the parameter's position in the caller's input (in a disclosure, in name
    /// order), `name` its (shortened) name.
    #[error("config param {index} ({name:?}) {field}: expected {expected}, found {found}")]
    Param {
        index: usize,
        name: String,
        field: &'static str,
        expected: String,
        found: String,
    },
    #[error(
        "config param {index} ({name:?}): the name is also used by param {first}; names must be unique"
    )]
    Duplicate {
        index: usize,
        first: usize,
        name: String,
    },
    #[error("config: expected {expected}, found {found}")]
    Count { expected: String, found: usize },
    #[error("config has no param {0:?}")]
    Unknown(String),
    /// A disclosure that is malformed in itself.
    #[error("config disclosure {field}: expected {expected}, found {found}")]
    Disclosure {
        field: &'static str,
        expected: String,
        found: String,
    },
    /// A well-formed disclosure that does not lead to its statement (`field` is `count` or
    /// `root`).
    #[error("config disclosure {field}: expected {expected}, found {found}")]
    DisclosureMismatch {
        field: &'static str,
        expected: String,
        found: String,
    },
}

impl Classify for ConfigError {
    fn class(&self) -> ErrorClass {
        match self {
            ConfigError::Wire(e) => e.class(),
            ConfigError::Record(e) => e.class(),
            ConfigError::Param { .. }
            | ConfigError::Duplicate { .. }
            | ConfigError::Count { .. }
            | ConfigError::Unknown(_)
            | ConfigError::Disclosure { .. } => ErrorClass::Input,
            ConfigError::DisclosureMismatch { .. } => ErrorClass::Verification,
        }
    }
}

/// One named configuration parameter.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConfigParam {
    pub name: String,
    pub value: String,
}

impl ConfigParam {
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> ConfigParam {
        ConfigParam {
            name: name.into(),
            value: value.into(),
        }
    }
}

/// Whether `name` is 1 to [`MAX_NAME_LEN`] characters of `[a-z0-9._-]`.
pub fn is_valid_param_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(&c))
}

/// A name short enough for an error message.
fn shown(name: &str) -> String {
    const SHOWN: usize = 64;
    match name.char_indices().nth(SHOWN) {
        Some((at, _)) => format!("{}...", &name[..at]),
        None => name.to_owned(),
    }
}

fn param_error(
    index: usize,
    name: &str,
    field: &'static str,
    expected: impl Into<String>,
    found: impl ToString,
) -> ConfigError {
    ConfigError::Param {
        index,
        name: shown(name),
        field,
        expected: expected.into(),
        found: found.to_string(),
    }
}

/// Checks one parameter's name and value; `index` names it in errors.
fn check_param(index: usize, p: &ConfigParam) -> Result<(), ConfigError> {
    if !is_valid_param_name(&p.name) {
        let found = if p.name.is_empty() || p.name.len() > MAX_NAME_LEN {
            format!("{} bytes", p.name.len())
        } else {
            "a character outside [a-z0-9._-]".to_owned()
        };
        return Err(param_error(
            index,
            &p.name,
            "name",
            format!("1 to {MAX_NAME_LEN} characters of [a-z0-9._-]"),
            found,
        ));
    }
    if p.value.len() > MAX_VALUE_LEN {
        return Err(param_error(
            index,
            &p.name,
            "value",
            format!("at most {MAX_VALUE_LEN} bytes"),
            format!("{} bytes", p.value.len()),
        ));
    }
    Ok(())
}

fn check_salt(index: usize, name: &str, salt: &[u8]) -> Result<(), ConfigError> {
    if !(MIN_SALT_LEN..=MAX_SALT_LEN).contains(&salt.len()) {
        return Err(param_error(
            index,
            name,
            "salt",
            format!("{MIN_SALT_LEN} to {MAX_SALT_LEN} bytes"),
            format!("{} bytes", salt.len()),
        ));
    }
    Ok(())
}

fn check_count(n: usize) -> Result<(), ConfigError> {
    if n == 0 || n > MAX_PARAMS {
        return Err(ConfigError::Count {
            expected: format!("1 to {MAX_PARAMS} params"),
            found: n,
        });
    }
    Ok(())
}

/// Validates `items` (each with its input position) and sorts them by name, refusing
/// repeated names.
fn canonical<T>(
    mut items: Vec<(usize, ConfigParam, T)>,
) -> Result<Vec<(usize, ConfigParam, T)>, ConfigError> {
    check_count(items.len())?;
    for (i, p, _) in &items {
        check_param(*i, p)?;
    }
    items.sort_by(|a, b| a.1.name.cmp(&b.1.name).then(a.0.cmp(&b.0)));
    for w in items.windows(2) {
        if w[0].1.name == w[1].1.name {
            return Err(ConfigError::Duplicate {
                index: w[1].0,
                first: w[0].0,
                name: shown(&w[1].1.name),
            });
        }
    }
    Ok(items)
}

/// A validated configuration in canonical (name) order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigList {
    params: Vec<ConfigParam>,
}

impl ConfigList {
    /// Validates names (1 to 128 characters of `[a-z0-9._-]`, unique), values (at most 64 KiB)
    /// and the count (1 to 65536), and sorts by name.
    pub fn new(params: Vec<ConfigParam>) -> Result<ConfigList, ConfigError> {
        let items = params
            .into_iter()
            .enumerate()
            .map(|(i, p)| (i, p, ()))
            .collect();
        Ok(ConfigList {
            params: canonical(items)?.into_iter().map(|(_, p, ())| p).collect(),
        })
    }

    /// The parameters in name order.
    pub fn params(&self) -> &[ConfigParam] {
        &self.params
    }

    pub fn len(&self) -> usize {
        self.params.len()
    }

    /// Always false: a list holds at least one parameter.
    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
    }

    pub fn get(&self, name: &str) -> Option<&ConfigParam> {
        self.params
            .binary_search_by(|p| p.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.params[i])
    }

    /// Pairs each parameter with its salt; `salts` are in name order (the order of
    /// [`ConfigList::params`]), one per parameter, 16 to 64 bytes each.
    pub fn salted(self, salts: Vec<Vec<u8>>) -> Result<ConfigOpening, ConfigError> {
        if salts.len() != self.params.len() {
            return Err(ConfigError::Count {
                expected: format!("{} salts, one per param", self.params.len()),
                found: salts.len(),
            });
        }
        ConfigOpening::new(self.params.into_iter().zip(salts).collect())
    }
}

impl ConfigOpening {
    /// Validates every parameter and salt and sorts by name. Errors name the parameter by its
    /// position in `params`.
    pub fn new(params: Vec<(ConfigParam, Vec<u8>)>) -> Result<ConfigOpening, ConfigError> {
        let items: Vec<_> = params
            .into_iter()
            .enumerate()
            .map(|(i, (p, s))| (i, p, s))
            .collect();
        let items = canonical(items)?;
        for (i, p, s) in &items {
            check_salt(*i, &p.name, s)?;
        }
        Ok(ConfigOpening::from_sorted(
            items.into_iter().map(|(_, p, s)| (p, s)).collect(),
        ))
    }
}
