//! Which TPM to talk to.

use std::fmt;
use std::path::{Path, PathBuf};

use vmattest_core::class::{Classify, ErrorClass};

/// The environment variable holding a TCTI configuration string, used when there is no
/// `/dev/tpmrm0` (e.g. `swtpm:host=127.0.0.1,port=2321`).
pub const TCTI_ENV: &str = "VMATTEST_TPM_TCTI";
/// The kernel's TPM resource manager device.
const DEFAULT_DEVICE: &str = "/dev/tpmrm0";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "no TPM configured: {device} does not exist and {env} is not set \
         (set it to a TCTI string such as swtpm:host=127.0.0.1,port=2321)"
    )]
    NothingConfigured { device: PathBuf, env: &'static str },
    #[error("{env} is set but empty or not valid UTF-8")]
    BadEnv { env: &'static str },
}

impl Classify for ConfigError {
    fn class(&self) -> ErrorClass {
        match self {
            ConfigError::NothingConfigured { .. } => ErrorClass::Environment,
            // The variable is part of the invocation, like an argument.
            ConfigError::BadEnv { .. } => ErrorClass::Input,
        }
    }
}

/// Where the TPM is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TpmTarget {
    /// A character device, normally `/dev/tpmrm0`.
    Device(PathBuf),
    /// A TCTI configuration string as libtss2 spells it (`swtpm:host=...,port=...`,
    /// `device:/dev/tpm0`, `tabrmd:...`).
    Tcti(String),
}

impl fmt::Display for TpmTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TpmTarget::Device(path) => write!(f, "device {}", path.display()),
            TpmTarget::Tcti(tcti) => write!(f, "TCTI {tcti:?}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpmConfig {
    pub target: TpmTarget,
}

impl TpmConfig {
    pub fn device(path: impl Into<PathBuf>) -> Self {
        TpmConfig {
            target: TpmTarget::Device(path.into()),
        }
    }

    pub fn tcti(tcti: impl Into<String>) -> Self {
        TpmConfig {
            target: TpmTarget::Tcti(tcti.into()),
        }
    }

    /// `/dev/tpmrm0` when it exists, otherwise the TCTI string in [`TCTI_ENV`].
    pub fn from_env() -> Result<Self, ConfigError> {
        let tcti = match std::env::var_os(TCTI_ENV) {
            None => None,
            Some(value) => Some(
                value
                    .into_string()
                    .map_err(|_| ConfigError::BadEnv { env: TCTI_ENV })?,
            ),
        };
        Self::from_sources(Path::new(DEFAULT_DEVICE), tcti.as_deref())
    }

    /// [`TpmConfig::from_env`] with the device path and the variable's value given.
    pub fn from_sources(device: &Path, tcti: Option<&str>) -> Result<Self, ConfigError> {
        if device.exists() {
            return Ok(Self::device(device));
        }
        match tcti.map(str::trim) {
            Some("") => Err(ConfigError::BadEnv { env: TCTI_ENV }),
            Some(tcti) => Ok(Self::tcti(tcti)),
            None => Err(ConfigError::NothingConfigured {
                device: device.to_path_buf(),
                env: TCTI_ENV,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn nothing_configured_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("tpmrm0");
        let err = TpmConfig::from_sources(&missing, None).unwrap_err();
        assert!(matches!(err, ConfigError::NothingConfigured { .. }));
        let msg = err.to_string();
        assert!(msg.contains("does not exist"), "{msg}");
        assert!(msg.contains(TCTI_ENV), "{msg}");
    }

    #[test]
    fn tcti_used_without_device_and_device_preferred() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("tpmrm0");
        let tcti = "swtpm:host=127.0.0.1,port=2321";
        assert_eq!(
            TpmConfig::from_sources(&missing, Some(tcti)).unwrap(),
            TpmConfig::tcti(tcti)
        );
        assert!(TpmConfig::from_sources(&missing, Some("  ")).is_err());
        let present = dir.path().join("present");
        std::fs::write(&present, b"").unwrap();
        assert_eq!(
            TpmConfig::from_sources(&present, Some(tcti)).unwrap(),
            TpmConfig::device(&present)
        );
    }
}
