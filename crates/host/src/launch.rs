//! The launch gate: measure a VM's configuration, check it against a reference (locally, or
//! on the server whose signed verdict is checked under its pinned EAR key), and start the VM
//! only when every parameter matches.

use std::path::{Path, PathBuf};
use std::time::Duration;

use vmattest_api::{ConfigCheckRequest, ConfigCheckResult, ConfigMismatch};
use vmattest_core::class::{Classify, ErrorClass};
use vmattest_core::record::UnixTime;
use vmattest_qemu::VmSpec;
use vmattest_sign::Signer;

use crate::files::{self, FileError};
use crate::measurement::{self, Measurement, MeasurementError, Packages};
use crate::vm::{self, HostVmError, Started};

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(transparent)]
    Measurement(#[from] MeasurementError),
    #[error(transparent)]
    Vm(#[from] HostVmError),
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Bind(#[from] crate::eventlog::EventLogError),
    #[error("the server's configuration check")]
    Server(#[source] vmattest_client::ClientError),
    /// Every mismatch; the message names the last (front ends list the others).
    #[error("launch refused: {last}")]
    Refused {
        last: String,
        mismatches: Vec<ConfigMismatch>,
    },
    #[error("launch refused: the server did not accept the configuration of VM {0}")]
    NotAccepted(String),
    #[error("the server checked root {checked}, not the measured {measured}")]
    WrongRoot { checked: String, measured: String },
    #[error("{path}: expected the JSON of `vmattest remote ear-key --json`{detail}")]
    ServerKey { path: PathBuf, detail: String },
    #[error("launch refused: the server's verdict {0}")]
    Verdict(String),
    #[error("creating a private temporary directory")]
    TempDir(#[source] std::io::Error),
}

impl Classify for LaunchError {
    fn class(&self) -> ErrorClass {
        match self {
            LaunchError::Measurement(e) => e.class(),
            LaunchError::Vm(e) => e.class(),
            LaunchError::File(e) => e.class(),
            LaunchError::Bind(e) => e.class(),
            LaunchError::Server(e) => e.class(),
            LaunchError::Refused { .. }
            | LaunchError::NotAccepted(_)
            | LaunchError::WrongRoot { .. }
            | LaunchError::Verdict(_) => ErrorClass::Verification,
            LaunchError::ServerKey { .. } => ErrorClass::Input,
            LaunchError::TempDir(_) => ErrorClass::Environment,
        }
    }
}

/// Where the measured configuration is checked.
#[derive(Debug)]
pub enum Gate<'a> {
    /// A reference configuration file, checked here.
    Local(&'a Path),
    /// The server holding the VM's reference; with `server_key`, the answer must carry a
    /// verdict signed by that pinned EAR key.
    Server {
        client: &'a vmattest_client::Client,
        server_key: Option<&'a Path>,
    },
}

/// What `vm launch` does.
#[derive(Debug)]
pub struct Launch<'a> {
    pub spec: &'a VmSpec,
    /// The VM's name in the statement and on the server.
    pub name: &'a str,
    pub signer: &'a dyn Signer,
    pub packages: &'a Packages,
    pub gate: Gate<'a>,
    /// Keep the opening and statement here (default: a private temporary directory).
    pub out: Option<&'a Path>,
    pub force: bool,
    pub bind_pcr: Option<u32>,
    pub wait_for: Option<&'a str>,
    pub timeout: Duration,
    pub time: UnixTime,
}

/// A launched VM.
#[derive(Debug)]
pub struct Launched {
    pub measurement: Measurement,
    /// "local" or "server".
    pub checked_by: &'static str,
    pub started: Started,
}

/// Measures, checks against the reference, and starts the VM only on a match.
pub fn launch(l: &Launch<'_>) -> Result<Launched, LaunchError> {
    let params = vmattest_vmconfig::spec_params(l.spec)
        .map_err(|e| LaunchError::Measurement(MeasurementError::Spec(e)))?;
    let params = measurement::canonical(params, l.packages)?;
    let m = measurement::measure(params, l.name, l.signer, l.time)?;
    let temp;
    let dir = match l.out {
        Some(d) => d,
        None => {
            temp = vmattest_qemu::private::tempdir("vmattest-launch-", None)
                .map_err(LaunchError::TempDir)?;
            temp.path()
        }
    };
    measurement::write(dir, &m, l.force)?;
    let (mismatches, checked_by) = match &l.gate {
        Gate::Local(path) => (measurement::check(path, &m.params())?, "local"),
        Gate::Server { client, server_key } => {
            (server_check(client, *server_key, l.name, &m)?, "server")
        }
    };
    if let Some(last) = mismatches.last() {
        return Err(LaunchError::Refused {
            last: measurement::mismatch_line(last),
            mismatches,
        });
    }
    if let Some(pcr) = l.bind_pcr {
        let object = m.statement.object_bytes();
        let quote = dir.join("config.quote.json");
        crate::eventlog::bind_config(&quote, object, l.name, &m.opening.root(), pcr)?;
    }
    let started = vm::start(l.spec, l.wait_for, l.timeout)?;
    Ok(Launched {
        measurement: m,
        checked_by,
        started,
    })
}

/// Asks the server to check measurement `m` of VM `name` against its reference; with
/// `server_key`, its signed verdict must say the same. Returns the mismatches.
pub fn server_check(
    client: &vmattest_client::Client,
    server_key: Option<&Path>,
    name: &str,
    m: &Measurement,
) -> Result<Vec<ConfigMismatch>, LaunchError> {
    let req = ConfigCheckRequest {
        opening: hex::encode(m.opening.encode()),
        statement: hex::encode(
            m.statement
                .encode()
                .map_err(|e| MeasurementError::Config(e.into()))?,
        ),
    };
    let result = client
        .verify_config(name, &req)
        .map_err(LaunchError::Server)?;
    if result.root != m.root() {
        return Err(LaunchError::WrongRoot {
            checked: result.root,
            measured: m.root(),
        });
    }
    if let Some(key) = server_key {
        check_verdict(key, &result, name)?;
    }
    if !result.ok && result.mismatches.is_empty() {
        return Err(LaunchError::NotAccepted(name.to_owned()));
    }
    Ok(result.mismatches)
}

/// Checks the server's verdict JWT under its pinned EAR key and that it says what the answer's
/// plain fields say, for this VM and this root.
fn check_verdict(key_file: &Path, result: &ConfigCheckResult, vm: &str) -> Result<(), LaunchError> {
    let key_err = |detail: String| LaunchError::ServerKey {
        path: key_file.to_path_buf(),
        detail,
    };
    let text = files::read_capped(key_file, 64 * 1024, "server key")?;
    let key: vmattest_api::EarKey =
        serde_json::from_slice(&text).map_err(|e| key_err(format!(": {e}")))?;
    let data = crate::jws::verify(&key.jwk, &result.result).map_err(|e| match e {
        crate::jws::JwsError::Key(detail) => key_err(format!("; field jwk: {detail}")),
        e => LaunchError::Verdict(format!(
            "does not verify under the pinned key {}: {e}",
            key_file.display()
        )),
    })?;
    let kid = data.header.get("kid").and_then(serde_json::Value::as_str);
    if kid != Some(key.kid.as_str()) {
        return Err(LaunchError::Verdict(format!(
            "names key {}, the pinned key is {}",
            kid.unwrap_or("none"),
            key.kid
        )));
    }
    let c = &data.claims;
    let mismatches: Vec<serde_json::Value> = result
        .mismatches
        .iter()
        .map(|m| serde_json::json!({"name": m.name, "expected": m.expected, "found": m.found}))
        .collect();
    for (claim, want) in [
        ("vmattest.vm", serde_json::json!(vm)),
        ("vmattest.config-root", serde_json::json!(result.root)),
        ("vmattest.config-ok", serde_json::json!(result.ok)),
        ("vmattest.mismatches", serde_json::json!(mismatches)),
    ] {
        if c.get(claim) != Some(&want) {
            return Err(LaunchError::Verdict(format!(
                "claim {claim} is {}, the answer says {want}",
                c.get(claim)
                    .map_or_else(|| "absent".into(), ToString::to_string)
            )));
        }
    }
    Ok(())
}
