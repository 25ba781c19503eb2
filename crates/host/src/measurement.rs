//! Configuration measurement: a VM's parameters salted into a Merkle root and signed.
//!
//! A measurement directory holds `config.opening` (every parameter with its salt; private,
//! mode 0600) and `config.statement` (the signed root). Single parameters are disclosed from
//! it with a proof that anyone holding the signer's public key can check.

use std::path::{Path, PathBuf};

use vmattest_api::ConfigMismatch;
use vmattest_core::class::{Classify, ErrorClass};
use vmattest_core::config::reference::{MAX_REFERENCE_LEN, Reference};
use vmattest_core::config::{
    ConfigError, ConfigList, ConfigOpening, ConfigParam, MAX_OPENING_LEN, MAX_SIGNED_STATEMENT_LEN,
    MIN_SALT_LEN, SignedConfigStatement,
};
use vmattest_core::record::{Signed, UnixTime};
use vmattest_core::wire::{HEADER_LEN, Kind};
use vmattest_sign::{PublicKey, Signer};
use vmattest_vmconfig::Param;

use crate::files::{self, FileError};
use crate::report::ConfigMeasureJson;

/// The private opening in a measurement directory.
pub const OPENING_FILE: &str = "config.opening";
/// The signed statement in a measurement directory.
pub const STATEMENT_FILE: &str = "config.statement";
/// Largest package manifest or dpkg status file read.
const MAX_TEXT_INPUT: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum MeasurementError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{path}")]
    Decode {
        path: PathBuf,
        #[source]
        source: ConfigError,
    },
    #[error("{path}")]
    Reference {
        path: PathBuf,
        #[source]
        source: vmattest_core::config::reference::ReferenceError,
    },
    #[error(
        "{statement}: signs root {signed} of {signed_count} params, but {opening} has root {root} of {count} params"
    )]
    Mismatch {
        statement: PathBuf,
        opening: PathBuf,
        signed: String,
        signed_count: u64,
        root: String,
        count: usize,
    },
    #[error("{dir}: no parameter {param:?}")]
    NoParam { dir: PathBuf, param: String },
    #[error("configuration")]
    Config(#[source] ConfigError),
    #[error("configuration parameters")]
    Params(#[source] vmattest_vmconfig::ParamError),
    #[error("VM spec")]
    Spec(#[source] vmattest_vmconfig::SpecParamError),
    #[error("domain XML")]
    Xml(#[source] vmattest_vmconfig::XmlError),
    #[error("packages")]
    Packages(#[source] vmattest_vmconfig::PackageError),
    #[error("packages from {path}")]
    Debugfs {
        path: PathBuf,
        #[source]
        source: vmattest_vmconfig::DebugfsError,
    },
    #[error("domain XML {path}: expected a <name>, or give --name")]
    NoName { path: PathBuf },
    #[error("signing the config statement of VM {vm:?}")]
    Sign {
        vm: String,
        #[source]
        source: vmattest_sign::signing::SigningError,
    },
    #[error("{path}: disclosure")]
    Disclosure {
        path: PathBuf,
        #[source]
        source: ConfigError,
    },
    #[error("{path}: statement signature")]
    Signature {
        path: PathBuf,
        #[source]
        source: vmattest_sign::record::RecordSigError,
    },
    #[error("reading OS randomness for salts: {0}")]
    Random(String),
    #[error(transparent)]
    Bind(#[from] crate::eventlog::EventLogError),
    #[error("{path}: cannot create the measurement directory")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Classify for MeasurementError {
    fn class(&self) -> ErrorClass {
        use MeasurementError as E;
        match self {
            E::File(e) => e.class(),
            E::Decode { source, .. } | E::Disclosure { source, .. } | E::Config(source) => {
                source.class()
            }
            E::Reference { .. } | E::NoParam { .. } | E::Params(_) | E::NoName { .. } => {
                ErrorClass::Input
            }
            E::Mismatch { .. } => ErrorClass::Verification,
            E::Spec(e) => e.class(),
            E::Xml(e) => e.class(),
            E::Packages(e) => e.class(),
            E::Debugfs { source, .. } => source.class(),
            E::Sign { source, .. } => source.class(),
            E::Signature { source, .. } => source.class(),
            E::Bind(e) => e.class(),
            E::Random(_) | E::Dir { .. } => ErrorClass::Environment,
        }
    }
}

/// A measured and signed configuration.
#[derive(Debug)]
pub struct Measurement {
    pub opening: ConfigOpening,
    pub statement: SignedConfigStatement,
}

impl Measurement {
    pub fn root(&self) -> String {
        self.opening.root().to_hex()
    }

    pub fn params(&self) -> Vec<ConfigParam> {
        self.opening
            .params()
            .iter()
            .map(|(p, _)| p.clone())
            .collect()
    }

    /// What `config show` prints.
    pub fn describe(&self) -> crate::report::ConfigJson {
        let s = self.statement.value();
        crate::report::ConfigJson {
            vm: s.vm.clone(),
            root: self.root(),
            count: self.opening.len(),
            time: s.time.to_string(),
            key_ids: self.key_ids(),
            params: self
                .params()
                .into_iter()
                .map(|p| crate::report::ParamJson {
                    name: p.name,
                    value: p.value,
                })
                .collect(),
        }
    }

    pub fn key_ids(&self) -> Vec<String> {
        self.statement
            .value()
            .key_ids
            .iter()
            .map(|k| k.to_hex())
            .collect()
    }
}

/// Where the guest's installed packages come from.
#[derive(Debug, Clone, Default)]
pub enum Packages {
    #[default]
    None,
    /// `dpkg-query -W -f '${Package} ${Version}\n'` output.
    Manifest(PathBuf),
    /// A dpkg status file.
    DpkgStatus(PathBuf),
    /// A raw ext2/3/4 image to read `/var/lib/dpkg/status` from.
    Image(PathBuf),
}

/// The parameters of the guest's installed packages.
pub fn package_params(src: &Packages) -> Result<Vec<Param>, MeasurementError> {
    use vmattest_vmconfig as vc;
    let packages = match src {
        Packages::None => return Ok(Vec::new()),
        Packages::Manifest(p) => {
            let text = files::read_text(p, MAX_TEXT_INPUT, "package manifest")?;
            vc::parse_manifest(&text, &p.display().to_string())
        }
        Packages::DpkgStatus(p) => {
            let text = files::read_text(p, MAX_TEXT_INPUT, "dpkg status file")?;
            vc::parse_status(&text, &p.display().to_string())
        }
        Packages::Image(img) => {
            let text = vc::status_from_image(img).map_err(|source| MeasurementError::Debugfs {
                path: img.clone(),
                source,
            })?;
            vc::parse_status(&text, &format!("{}:/var/lib/dpkg/status", img.display()))
        }
    }
    .map_err(MeasurementError::Packages)?;
    vc::package_params(&packages).map_err(MeasurementError::Packages)
}

/// The parameters of a libvirt domain XML (`-` reads standard input) and the domain's name.
pub fn domain_params(path: &Path) -> Result<(Vec<Param>, Option<String>), MeasurementError> {
    let text = files::read_text(
        path,
        vmattest_vmconfig::libvirt::MAX_XML_BYTES,
        "domain XML",
    )?;
    domain_text_params(&text, path)
}

/// As [`domain_params`], for XML already read (`origin` names where from, for errors).
pub fn domain_text_params(
    text: &str,
    origin: &Path,
) -> Result<(Vec<Param>, Option<String>), MeasurementError> {
    let params = vmattest_vmconfig::domain_params(text, origin).map_err(MeasurementError::Xml)?;
    // Parsed and capped by `domain_params` above; only the name is read here.
    let name = roxmltree::Document::parse(text).ok().and_then(|doc| {
        doc.root_element()
            .children()
            .find(|n| n.has_tag_name("name"))
            .and_then(|n| n.text())
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
    });
    Ok((params, name))
}

/// Sorts and checks a parameter list, adding the package parameters.
pub fn canonical(
    mut params: Vec<Param>,
    packages: &Packages,
) -> Result<Vec<Param>, MeasurementError> {
    params.extend(package_params(packages)?);
    vmattest_vmconfig::canonical(params).map_err(MeasurementError::Params)
}

/// Salts every parameter with 16 fresh random bytes, builds the opening and signs its
/// statement (timed `time`, no quote nonce) with `signer`.
pub fn measure(
    params: Vec<Param>,
    vm: &str,
    signer: &dyn Signer,
    time: UnixTime,
) -> Result<Measurement, MeasurementError> {
    let list = ConfigList::new(params).map_err(MeasurementError::Config)?;
    let mut salts = Vec::with_capacity(list.len());
    for _ in 0..list.len() {
        let mut salt = vec![0u8; MIN_SALT_LEN];
        getrandom::fill(&mut salt).map_err(|e| MeasurementError::Random(e.to_string()))?;
        salts.push(salt);
    }
    let opening = list.salted(salts).map_err(MeasurementError::Config)?;
    let statement = opening.statement(vm, time, &[], vec![signer.key_id()]);
    let statement = vmattest_sign::signing::sign(statement, &[signer]).map_err(|source| {
        MeasurementError::Sign {
            vm: vm.to_owned(),
            source,
        }
    })?;
    Ok(Measurement { opening, statement })
}

/// Writes the opening (0600) and the statement into `dir`, refusing to replace either unless
/// `force`. Returns their paths.
pub fn write(
    dir: &Path,
    m: &Measurement,
    force: bool,
) -> Result<(PathBuf, PathBuf), MeasurementError> {
    let opening = dir.join(OPENING_FILE);
    let statement = dir.join(STATEMENT_FILE);
    if !force {
        files::ensure_absent(&opening, "a configuration opening without --force")?;
        files::ensure_absent(&statement, "a configuration statement without --force")?;
    }
    std::fs::create_dir_all(dir).map_err(|source| MeasurementError::Dir {
        path: dir.to_path_buf(),
        source,
    })?;
    let bytes = m
        .statement
        .encode()
        .map_err(|e| MeasurementError::Config(e.into()))?;
    // The statement first: a directory with an opening always has its statement.
    files::write_atomic(&statement, &bytes, "configuration statement")?;
    files::write_private(&opening, &m.opening.encode(), "configuration opening")?;
    Ok((opening, statement))
}

/// `config measure`: measures `params` of VM `vm`, signs the statement now and writes both
/// into `dir`; with `bind_pcr`, the statement is also extended into that PCR and quoted
/// (`config.quote.json` beside them).
pub fn measure_into(
    dir: &Path,
    params: Vec<Param>,
    vm: String,
    signer: &dyn Signer,
    force: bool,
    bind_pcr: Option<u32>,
) -> Result<ConfigMeasureJson, MeasurementError> {
    let m = measure(params, &vm, signer, crate::now())?;
    let (opening, statement) = write(dir, &m, force)?;
    let mut quote = None;
    if let Some(pcr) = bind_pcr {
        let path = dir.join("config.quote.json");
        let object = m.statement.object_bytes();
        crate::eventlog::bind_config(&path, object, &vm, &m.opening.root(), pcr)?;
        let nonce = hex::encode(crate::eventlog::config_quote_nonce(object));
        quote = Some((path.display().to_string(), nonce));
    }
    Ok(ConfigMeasureJson {
        vm,
        root: m.root(),
        count: m.opening.len(),
        params: m.params().into_iter().map(|p| p.name).collect(),
        key_ids: m.key_ids(),
        opening: opening.display().to_string(),
        statement: statement.display().to_string(),
        quote_nonce: quote.as_ref().map(|(_, n)| n.clone()),
        quote: quote.map(|(p, _)| p),
    })
}

/// Reads a measurement directory, refusing a statement that does not sign the opening's root.
pub fn load(dir: &Path) -> Result<Measurement, MeasurementError> {
    let op_path = dir.join(OPENING_FILE);
    let st_path = dir.join(STATEMENT_FILE);
    let opening = ConfigOpening::decode(&files::read_capped(
        &op_path,
        MAX_OPENING_LEN,
        "config opening",
    )?)
    .map_err(|source| MeasurementError::Decode {
        path: op_path.clone(),
        source,
    })?;
    let max = MAX_SIGNED_STATEMENT_LEN as u64;
    let statement = Signed::decode(&files::read_capped(
        &st_path,
        max,
        "signed config statement",
    )?)
    .map_err(|e| MeasurementError::Decode {
        path: st_path.clone(),
        source: e.into(),
    })?;
    let m = Measurement { opening, statement };
    let s = m.statement.value();
    if s.root != m.opening.root() || s.count as usize != m.opening.len() {
        return Err(MeasurementError::Mismatch {
            statement: st_path,
            opening: op_path,
            signed: s.root.to_hex(),
            signed_count: s.count.into(),
            root: m.root(),
            count: m.opening.len(),
        });
    }
    Ok(m)
}

/// A disclosure proof of `param` under the directory's signed statement.
pub fn disclose(dir: &Path, param: &str) -> Result<(Measurement, Vec<u8>), MeasurementError> {
    let m = load(dir)?;
    if m.opening.params().iter().all(|(p, _)| p.name != param) {
        return Err(MeasurementError::NoParam {
            dir: dir.to_path_buf(),
            param: param.to_owned(),
        });
    }
    let bytes = m
        .opening
        .disclose_signed(param, &m.statement)
        .map_err(MeasurementError::Config)?;
    Ok((m, bytes))
}

/// Checks a disclosure proof and its statement's signatures against pinned keys.
pub fn verify_disclosure(
    proof: &Path,
    keys: &[PublicKey],
) -> Result<(ConfigParam, SignedConfigStatement), MeasurementError> {
    let max = (Kind::ConfigDisclosure.max_body() + HEADER_LEN) as u64;
    let bytes = files::read_capped(proof, max, "config disclosure")?;
    let (param, statement) =
        vmattest_core::config::verify_disclosure(&bytes).map_err(|source| {
            MeasurementError::Disclosure {
                path: proof.to_path_buf(),
                source,
            }
        })?;
    vmattest_sign::record::verify_signed(&statement, keys).map_err(|source| {
        MeasurementError::Signature {
            path: proof.to_path_buf(),
            source,
        }
    })?;
    Ok((param, statement))
}

/// Reads and parses a reference configuration; returns its text too.
pub fn load_reference(path: &Path) -> Result<(String, Reference), MeasurementError> {
    let text = files::read_text(path, MAX_REFERENCE_LEN as u64, "reference configuration")?;
    let reference = Reference::parse(&text).map_err(|source| MeasurementError::Reference {
        path: path.to_path_buf(),
        source,
    })?;
    Ok((text, reference))
}

/// The differences between `params` and the reference at `path`.
pub fn check(path: &Path, params: &[ConfigParam]) -> Result<Vec<ConfigMismatch>, MeasurementError> {
    let (_, reference) = load_reference(path)?;
    Ok(reference
        .check(params)
        .into_iter()
        .map(|m| ConfigMismatch {
            name: m.name,
            expected: m.expected,
            found: m.found,
        })
        .collect())
}

/// `NAME: expected X, found Y`.
pub fn mismatch_line(m: &ConfigMismatch) -> String {
    format!("{}: expected {}, found {}", m.name, m.expected, m.found)
}
