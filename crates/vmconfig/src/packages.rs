//! Installed packages: parsed from a `dpkg-query` manifest or a dpkg status file, then turned
//! into `packages.sha256` and one `package.NAME` per package.
//!
//! The canonical package list is one `NAME VERSION\n` line per package, sorted by name (byte
//! order), each package once: what `dpkg-query -W -f '${Package} ${Version}\n' | LC_ALL=C
//! sort -u` prints for a system without conflicting multi-arch versions. `packages.sha256` is
//! its SHA-256, so `sha256sum` of that output checks it.

use vmattest_core::class::{Classify, ErrorClass};

use crate::measure::sha256_hex;
use crate::{Builder, Param, ParamError};

/// Largest manifest or status file accepted.
pub const MAX_PACKAGE_INPUT_BYTES: usize = 64 << 20;
/// Most packages in one list.
pub const MAX_PACKAGES: usize = 100_000;
/// `Status` values (want, flag, state) of an installed package.
const INSTALLED: [&str; 2] = ["install ok installed", "hold ok installed"];
/// Longest line in a manifest or status file.
const MAX_LINE: usize = 64 * 1024;

/// One installed package.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Package {
    pub name: String,
    pub version: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PackageError {
    #[error("{source_name}: {found} bytes, expected at most {MAX_PACKAGE_INPUT_BYTES}")]
    TooLarge { source_name: String, found: usize },
    #[error("{source_name}: more than {MAX_PACKAGES} packages")]
    TooMany { source_name: String },
    #[error("{source_name}: line {line}: {field}: expected {expected}, found {found:?}")]
    Invalid {
        source_name: String,
        line: usize,
        field: &'static str,
        expected: &'static str,
        found: String,
    },
    #[error("{source_name}: package {name:?} listed with versions {first:?} and {second:?}")]
    Conflict {
        source_name: String,
        name: String,
        first: String,
        second: String,
    },
    #[error("package {name:?}")]
    Name { name: String, source: ParamError },
}

impl Classify for PackageError {
    fn class(&self) -> ErrorClass {
        match self {
            PackageError::Name { source, .. } => source.class(),
            PackageError::TooLarge { .. }
            | PackageError::TooMany { .. }
            | PackageError::Invalid { .. }
            | PackageError::Conflict { .. } => ErrorClass::Input,
        }
    }
}

/// Parses a manifest of `NAME VERSION` lines (`dpkg-query -W -f '${Package} ${Version}\n'`).
/// Blank lines are skipped. `source_name` names the input in errors.
pub fn parse_manifest(text: &str, source_name: &str) -> Result<Vec<Package>, PackageError> {
    check_size(text, source_name)?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let invalid = |field, expected, found: &str| PackageError::Invalid {
            source_name: source_name.to_string(),
            line: line_no,
            field,
            expected,
            found: found.chars().take(200).collect(),
        };
        let mut parts = line.split_whitespace();
        let (Some(name), Some(version), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(invalid("line", "\"NAME VERSION\"", line));
        };
        check_package(name, version, &invalid)?;
        push(&mut out, name, version, source_name)?;
    }
    canonical_list(out, source_name)
}

/// Parses a dpkg status file (`/var/lib/dpkg/status`): paragraphs of `Field: value` lines
/// separated by blank lines, continuation lines starting with a space or tab. Only packages
/// whose `Status` is `install ok installed` (or `hold ok installed`, a held package) are kept.
pub fn parse_status(text: &str, source_name: &str) -> Result<Vec<Package>, PackageError> {
    check_size(text, source_name)?;
    let mut out = Vec::new();
    let mut para = Paragraph::default();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = line.trim_end_matches('\r');
        let invalid = |field, expected, found: &str| PackageError::Invalid {
            source_name: source_name.to_string(),
            line: line_no,
            field,
            expected,
            found: found.chars().take(200).collect(),
        };
        if line.len() > MAX_LINE {
            return Err(invalid("line", "a line of at most 64 KiB", ""));
        }
        if line.trim().is_empty() {
            para.finish(&mut out, source_name)?;
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if !para.started {
                return Err(invalid("line", "a field before a continuation line", line));
            }
            continue;
        }
        let Some((field, value)) = line.split_once(':') else {
            return Err(invalid("line", "\"Field: value\"", line));
        };
        if !para.started {
            para.started = true;
            para.line = line_no;
        }
        let value = value.trim();
        match field {
            "Package" => para.name = Some(value.to_string()),
            "Version" => para.version = Some(value.to_string()),
            "Status" => para.installed = INSTALLED.contains(&value),
            _ => {}
        }
    }
    para.finish(&mut out, source_name)?;
    canonical_list(out, source_name)
}

/// `packages.sha256` and one `package.NAME` = version per package. A `+` in a Debian package
/// name (`libstdc++6`) becomes `_`, which Debian names never contain.
pub fn package_params(packages: &[Package]) -> Result<Vec<Param>, PackageError> {
    let packages = canonical_list(packages.to_vec(), "package list")?;
    let mut b = Builder::default();
    let name_err = |name: &str| {
        let name = name.to_string();
        move |source| PackageError::Name { name, source }
    };
    b.push(
        "packages.sha256",
        sha256_hex(canonical_bytes(&packages).as_bytes()),
    )
    .map_err(name_err("packages.sha256"))?;
    for p in &packages {
        b.push(
            format!("package.{}", p.name.replace('+', "_")),
            p.version.as_str(),
        )
        .map_err(name_err(&p.name))?;
    }
    b.finish().map_err(name_err("package list"))
}

/// The canonical list: `NAME VERSION\n` per package, sorted, each package once.
pub fn canonical_bytes(packages: &[Package]) -> String {
    let mut sorted: Vec<&Package> = packages.iter().collect();
    sorted.sort();
    sorted.dedup();
    sorted
        .iter()
        .map(|p| format!("{} {}\n", p.name, p.version))
        .collect()
}

#[derive(Default)]
struct Paragraph {
    started: bool,
    line: usize,
    name: Option<String>,
    version: Option<String>,
    installed: bool,
}

impl Paragraph {
    fn finish(&mut self, out: &mut Vec<Package>, source_name: &str) -> Result<(), PackageError> {
        let para = std::mem::take(self);
        if !para.started || !para.installed {
            return Ok(());
        }
        let invalid = |field, expected, found: &str| PackageError::Invalid {
            source_name: source_name.to_string(),
            line: para.line,
            field,
            expected,
            found: found.chars().take(200).collect(),
        };
        let name = para.name.as_deref().unwrap_or("");
        let version = para.version.as_deref().unwrap_or("");
        check_package(name, version, &invalid)?;
        push(out, name, version, source_name)
    }
}

/// Debian policy: names are `[a-z0-9][a-z0-9+.-]+`; versions are non-empty without spaces.
fn check_package(
    name: &str,
    version: &str,
    invalid: &dyn Fn(&'static str, &'static str, &str) -> PackageError,
) -> Result<(), PackageError> {
    let name_ok = name.len() >= 2
        && name.len() <= 120
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"+.-".contains(&c));
    if !name_ok {
        return Err(invalid(
            "Package",
            "a Debian package name ([a-z0-9][a-z0-9+.-]+, at most 120)",
            name,
        ));
    }
    let version_ok = !version.is_empty()
        && version.len() <= 256
        && version.bytes().all(|c| c.is_ascii_graphic());
    if !version_ok {
        return Err(invalid(
            "Version",
            "a non-empty version without spaces",
            version,
        ));
    }
    Ok(())
}

fn push(
    out: &mut Vec<Package>,
    name: &str,
    version: &str,
    source_name: &str,
) -> Result<(), PackageError> {
    if out.len() >= MAX_PACKAGES {
        return Err(PackageError::TooMany {
            source_name: source_name.to_string(),
        });
    }
    out.push(Package {
        name: name.to_string(),
        version: version.to_string(),
    });
    Ok(())
}

/// Sorted, identical entries merged (a multi-arch package is listed once per architecture),
/// two versions of one package refused.
fn canonical_list(
    mut packages: Vec<Package>,
    source_name: &str,
) -> Result<Vec<Package>, PackageError> {
    packages.sort();
    packages.dedup();
    if let Some(w) = packages.windows(2).find(|w| w[0].name == w[1].name) {
        return Err(PackageError::Conflict {
            source_name: source_name.to_string(),
            name: w[0].name.clone(),
            first: w[0].version.clone(),
            second: w[1].version.clone(),
        });
    }
    Ok(packages)
}

fn check_size(text: &str, source_name: &str) -> Result<(), PackageError> {
    if text.len() > MAX_PACKAGE_INPUT_BYTES {
        return Err(PackageError::TooLarge {
            source_name: source_name.to_string(),
            found: text.len(),
        });
    }
    Ok(())
}
