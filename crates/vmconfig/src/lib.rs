//! A VM's intended configuration as a canonical list of named parameters.
//!
//! Every source (a vmattest VM spec, libvirt domain XML, the guest's installed packages) is
//! turned into `(name, value)` pairs of plain strings, sorted by name, with each name used once.
//! Names are 1 to [`MAX_NAME_LEN`] characters of `[a-z0-9._-]`. Files the guest sees (kernel,
//! initrd, firmware) are named by their SHA-256; disks by their dm-verity (SHA-256, no salt)
//! image root, which is what `veritysetup format` prints. The parameter names and their
//! sources are listed in docs/CONFIG.md.

pub mod debugfs;
pub mod domain;
pub mod libvirt;
pub mod measure;
pub mod packages;
pub mod spec;

pub use debugfs::{DebugfsError, status_from_image};
pub use libvirt::{XmlError, domain_params, load_domain_params};
pub use measure::{MeasureError, disk_root, sha256_file};
pub use packages::{Package, PackageError, package_params, parse_manifest, parse_status};
pub use spec::{SpecParamError, spec_params};
use vmattest_core::class::{Classify, ErrorClass};
/// One named configuration parameter: the core's type, the one the salted tree commits to.
pub use vmattest_core::config::ConfigParam as Param;
/// Longest parameter name.
pub use vmattest_core::config::MAX_NAME_LEN;
/// Whether `name` is 1 to [`MAX_NAME_LEN`] characters of `[a-z0-9._-]`.
pub use vmattest_core::config::is_valid_param_name as is_valid_name;

/// Errors building a parameter list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    #[error(
        "parameter name {name:?}: expected 1 to {MAX_NAME_LEN} characters of [a-z0-9._-], \
         found {len} characters"
    )]
    BadName { name: String, len: usize },
    #[error("parameter {name:?} given twice: {first:?} and {second:?}")]
    Duplicate {
        name: String,
        first: String,
        second: String,
    },
}

impl Classify for ParamError {
    fn class(&self) -> ErrorClass {
        ErrorClass::Input
    }
}

/// A parameter with a checked name.
pub fn param(name: impl Into<String>, value: impl Into<String>) -> Result<Param, ParamError> {
    let name = name.into();
    if !is_valid_name(&name) {
        let len = name.chars().count();
        return Err(ParamError::BadName { name, len });
    }
    Ok(Param::new(name, value))
}

/// Sorts `params` by name and refuses a name given twice.
pub fn canonical(mut params: Vec<Param>) -> Result<Vec<Param>, ParamError> {
    params.sort_by(|a, b| a.name.cmp(&b.name));
    if let Some(w) = params.windows(2).find(|w| w[0].name == w[1].name) {
        return Err(ParamError::Duplicate {
            name: w[0].name.clone(),
            first: w[0].value.clone(),
            second: w[1].value.clone(),
        });
    }
    Ok(params)
}

/// Collects parameters while building a list; the first bad name is kept as the error.
#[derive(Debug, Default)]
pub(crate) struct Builder {
    params: Vec<Param>,
}

impl Builder {
    pub(crate) fn push(
        &mut self,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<(), ParamError> {
        self.params.push(param(name, value)?);
        Ok(())
    }

    pub(crate) fn finish(self) -> Result<Vec<Param>, ParamError> {
        canonical(self.params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_valid_name("disk.vda.root"));
        assert!(is_valid_name("vcpu.0.pin"));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name("Disk"));
        assert!(!is_valid_name("package.g++"));
        assert!(!is_valid_name(&"a".repeat(129)));
        assert!(is_valid_name(&"a".repeat(128)));
    }

    #[test]
    fn canonical_sorts_and_refuses_duplicates() {
        let p = |n: &str, v: &str| param(n, v).unwrap();
        let sorted = canonical(vec![p("b", "1"), p("a", "2")]).unwrap();
        assert_eq!(sorted, vec![p("a", "2"), p("b", "1")]);
        let err = canonical(vec![p("a", "1"), p("a", "2")]).unwrap_err();
        assert!(matches!(err, ParamError::Duplicate { .. }), "{err}");
    }
}
