//! Region policy files (docs/POLICY.md), resolved with the guest kernel's System.map.

use std::path::{Path, PathBuf};

use vmattest_core::attest::policy::MAX_POLICY_BYTES;
use vmattest_core::attest::symbols::MAX_SYSTEM_MAP_BYTES;
use vmattest_core::attest::{AttestError, Policy, PolicyFile, SystemMap};
use vmattest_core::class::{Classify, ErrorClass};

use crate::files::{self, FileError};

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: AttestError,
    },
}

impl Classify for PolicyError {
    fn class(&self) -> ErrorClass {
        match self {
            PolicyError::File(e) => e.class(),
            PolicyError::Parse { .. } => ErrorClass::Input,
        }
    }
}

/// Reads and resolves a policy file (with a System.map for regions given by symbols).
pub fn load(policy: &Path, system_map: Option<&Path>) -> Result<Policy, PolicyError> {
    let parse = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PolicyError::Parse { path, source }
    };
    let text = files::read_text(policy, MAX_POLICY_BYTES as u64, "policy")?;
    let file = PolicyFile::parse(&text).map_err(parse(policy))?;
    let map = match system_map {
        Some(p) => {
            let text = files::read_text(p, MAX_SYSTEM_MAP_BYTES as u64, "System.map")?;
            Some(SystemMap::parse(&text).map_err(parse(p))?)
        }
        None => None,
    };
    file.resolve(map.as_ref()).map_err(parse(policy))
}
