//! The host daemon's config file (`/etc/vmattest/host.toml`, docs/OPERATIONS.md): the server,
//! the evidence key, and the VMs: vmattest specs, named libvirt domains, and selectors that
//! take every domain whose name matches a pattern. Unknown keys are refused, so a typo is an
//! error rather than a silently ignored setting.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest as _, Sha256};

/// A config file is a few kilobytes; anything larger is refused unread.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
const DEFAULT_STATE_DIR: &str = "/var/lib/vmattest/hostd";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Read(#[from] vmattest_host::files::FileError),
    #[error("{}: {detail}", path.display())]
    Parse { path: PathBuf, detail: String },
    #[error("{}: {field}: expected {expected}, found {found}", path.display())]
    Invalid {
        path: PathBuf,
        field: String,
        expected: &'static str,
        found: String,
    },
}

impl vmattest_core::class::Classify for ConfigError {
    fn class(&self) -> vmattest_core::class::ErrorClass {
        vmattest_core::class::ErrorClass::Input
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    state_dir: Option<PathBuf>,
    server: ServerConf,
    #[serde(default)]
    evidence: EvidenceConf,
    #[serde(default)]
    defaults: Defaults,
    #[serde(default)]
    vm: Vec<VmConf>,
    #[serde(default)]
    domain: Vec<DomainConf>,
    #[serde(default)]
    domains: Vec<SelectorConf>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ServerConf {
    pub url: String,
    pub token_file: PathBuf,
    pub ca_cert: Option<PathBuf>,
    /// Rounds in flight at once, each on its own connection: the server closes connections
    /// over its per-client cap (64 by default), so a host keeps well below it.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
}

fn default_concurrency() -> usize {
    16
}

/// The key that signs evidence and reports: a key file, or the TPM's key when absent.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EvidenceConf {
    pub key: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Defaults {
    attest_interval_secs: Option<u64>,
    paused: Option<bool>,
}

/// Scheduled snapshots of one VM into its store.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct SnapshotConf {
    /// The store; for a selector, `{name}` stands for the domain's name.
    pub store: PathBuf,
    pub interval_secs: u64,
    /// Keys that sign each link (the TPM's when `tpm` is set).
    #[serde(default)]
    pub keys: Vec<PathBuf>,
    #[serde(default)]
    pub tpm: bool,
    /// Keys the chain rotates to: the next take is co-signed by `keys` and these and
    /// announces them; from then on these sign alone.
    #[serde(default)]
    pub rotate_keys: Vec<PathBuf>,
    /// Pinned public keys a rollback verifies the chain with [default: each key's `.pub`].
    #[serde(default)]
    pub pubkeys: Vec<PathBuf>,
    /// Store secret: pages encrypted at rest (made on first use).
    pub secret: Option<PathBuf>,
    /// Tree algorithm of a new store.
    #[serde(default = "default_alg")]
    pub alg: String,
    /// Whether a new store keeps the head's images (see `snapshot init --no-head-cache`).
    #[serde(default = "default_head_cache")]
    pub head_cache: bool,
    /// Every how many seqs a new store's link is an anchor (see `snapshot init --anchor-every`).
    #[serde(default = "default_anchor_every")]
    pub anchor_every: u32,
    /// Capture a spec VM live (`snapshot take --live`): its RAM must be on shared memory.
    #[serde(default)]
    pub live: bool,
    /// Retention: keep the newest `keep` seqs ...
    pub keep: Option<u64>,
    /// ... and every seq younger than this; older ones are folded under a signed rebase.
    pub keep_within_secs: Option<u64>,
}

impl SnapshotConf {
    pub fn retention(&self) -> Option<vmattest_host::chain::Retention> {
        (self.keep.is_some() || self.keep_within_secs.is_some()).then_some(
            vmattest_host::chain::Retention {
                keep: self.keep,
                within: self.keep_within_secs,
            },
        )
    }
}

fn default_alg() -> String {
    "blake3".into()
}

fn default_head_cache() -> bool {
    true
}

fn default_anchor_every() -> u32 {
    vmattest_store::DEFAULT_ANCHOR_EVERY
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VmConf {
    spec: PathBuf,
    name: Option<String>,
    attest_interval_secs: Option<u64>,
    snapshots: Option<SnapshotConf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DomainConf {
    name: String,
    connect: Option<String>,
    server_name: Option<String>,
    attest_interval_secs: Option<u64>,
    snapshots: Option<SnapshotConf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectorConf {
    pub connect: Option<String>,
    /// A name pattern: `*` matches any run of characters, `?` one character.
    #[serde(rename = "match")]
    pub pattern: String,
    pub attest_interval_secs: Option<u64>,
    pub snapshots: Option<SnapshotConf>,
}

/// Lists the domains of a libvirt URI (the default connection for `None`).
pub type DomainLister<'a> = dyn FnMut(Option<&str>) -> Result<Vec<String>, String> + 'a;

/// What the daemon attests: a spec VM or a libvirt domain.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum GuestConf {
    Spec(PathBuf),
    Domain { name: String, uri: Option<String> },
}

/// One VM the daemon keeps attested.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// Its name on the server, unique in the config.
    pub name: String,
    pub guest: GuestConf,
    /// Between rounds [default: the policy's schedule].
    pub attest_interval: Option<Duration>,
    pub paused: bool,
    pub snapshots: Option<SnapshotConf>,
}

impl Target {
    /// Changes whenever anything the worker runs from changes, the spec file's text included,
    /// so that a reload restarts exactly the workers whose VM changed.
    pub fn fingerprint(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(format!("{self:?}").as_bytes());
        if let GuestConf::Spec(path) = &self.guest
            && let Ok(text) = vmattest_host::files::read_capped(path, MAX_CONFIG_BYTES, "VM spec")
        {
            h.update(&text);
        }
        h.finalize().into()
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub state_dir: PathBuf,
    pub server: ServerConf,
    pub evidence: EvidenceConf,
    /// Specs and named domains.
    pub targets: Vec<Target>,
    /// Expanded against libvirt's domain list at every reload and rescan.
    pub selectors: Vec<SelectorConf>,
    pub default_interval: Option<Duration>,
    pub paused: bool,
}

fn invalid(path: &Path, field: String, expected: &'static str, found: String) -> ConfigError {
    ConfigError::Invalid {
        path: path.to_path_buf(),
        field,
        expected,
        found,
    }
}

fn interval(
    path: &Path,
    field: String,
    secs: Option<u64>,
) -> Result<Option<Duration>, ConfigError> {
    match secs {
        Some(0) => Err(invalid(path, field, "at least 1 second", "0".into())),
        s => Ok(s.map(Duration::from_secs)),
    }
}

/// Live capture is built for spec VMs only; a domain asking for it is refused, not captured
/// paused behind the operator's back.
fn check_not_live(path: &Path, field: &str, s: &Option<SnapshotConf>) -> Result<(), ConfigError> {
    match s {
        Some(s) if s.live => Err(invalid(
            path,
            format!("{field}.snapshots.live"),
            "false: domains are captured paused",
            "true".into(),
        )),
        _ => Ok(()),
    }
}

fn check_snapshots(path: &Path, field: &str, s: &Option<SnapshotConf>) -> Result<(), ConfigError> {
    let Some(s) = s else { return Ok(()) };
    if s.interval_secs == 0 {
        return Err(invalid(
            path,
            format!("{field}.snapshots.interval_secs"),
            "at least 1 second",
            "0".into(),
        ));
    }
    for (key, v) in [("keep", s.keep), ("keep_within_secs", s.keep_within_secs)] {
        if v == Some(0) {
            return Err(invalid(
                path,
                format!("{field}.snapshots.{key}"),
                "at least 1",
                "0".into(),
            ));
        }
    }
    if s.keys.is_empty() && !s.tpm {
        return Err(invalid(
            path,
            format!("{field}.snapshots"),
            "keys = [...] or tpm = true to sign the links",
            "neither".into(),
        ));
    }
    Ok(())
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let bytes = vmattest_host::files::read_capped(path, MAX_CONFIG_BYTES, "hostd config")?;
        let text = std::str::from_utf8(&bytes).map_err(|_| ConfigError::Parse {
            path: path.to_path_buf(),
            detail: "expected UTF-8 TOML".into(),
        })?;
        Config::parse(path, text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let f: File = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            detail: e
                .to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
        })?;
        if f.server.concurrency == 0 {
            return Err(invalid(
                path,
                "server.concurrency".into(),
                "at least 1",
                "0".into(),
            ));
        }
        let paused = f.defaults.paused.unwrap_or(false);
        let default_interval = interval(
            path,
            "defaults.attest_interval_secs".into(),
            f.defaults.attest_interval_secs,
        )?;
        let mut targets = Vec::new();
        for (i, v) in f.vm.into_iter().enumerate() {
            let field = format!("vm[{i}]");
            check_snapshots(path, &field, &v.snapshots)?;
            let name = match v.name {
                Some(n) => n,
                None => vmattest_host::vm::load_spec(&v.spec.to_string_lossy())
                    .map(|s| s.name().to_owned())
                    .map_err(|e| {
                        invalid(path, format!("{field}.spec"), "a VM spec", e.to_string())
                    })?,
            };
            targets.push(Target {
                name,
                guest: GuestConf::Spec(v.spec),
                attest_interval: interval(
                    path,
                    format!("{field}.attest_interval_secs"),
                    v.attest_interval_secs,
                )?
                .or(default_interval),
                paused,
                snapshots: v.snapshots,
            });
        }
        for (i, d) in f.domain.into_iter().enumerate() {
            let field = format!("domain[{i}]");
            check_snapshots(path, &field, &d.snapshots)?;
            check_not_live(path, &field, &d.snapshots)?;
            targets.push(Target {
                name: d.server_name.unwrap_or_else(|| d.name.clone()),
                guest: GuestConf::Domain {
                    name: d.name,
                    uri: d.connect,
                },
                attest_interval: interval(
                    path,
                    format!("{field}.attest_interval_secs"),
                    d.attest_interval_secs,
                )?
                .or(default_interval),
                paused,
                snapshots: d.snapshots,
            });
        }
        for (i, s) in f.domains.iter().enumerate() {
            let field = format!("domains[{i}]");
            check_snapshots(path, &field, &s.snapshots)?;
            check_not_live(path, &field, &s.snapshots)?;
            interval(
                path,
                format!("{field}.attest_interval_secs"),
                s.attest_interval_secs,
            )?;
            if s.pattern.is_empty() {
                return Err(invalid(
                    path,
                    format!("{field}.match"),
                    "a name pattern",
                    "\"\"".into(),
                ));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for t in &targets {
            if !vmattest_core::chain::is_valid_name(&t.name, 64) {
                return Err(invalid(
                    path,
                    "name".into(),
                    "1-64 of [A-Za-z0-9._-]",
                    format!("{:?}", t.name),
                ));
            }
            if !seen.insert(t.name.clone()) {
                return Err(invalid(
                    path,
                    "name".into(),
                    "each VM once",
                    format!("{:?} twice", t.name),
                ));
            }
        }
        Ok(Config {
            path: path.to_path_buf(),
            state_dir: f
                .state_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
            server: f.server,
            evidence: f.evidence,
            targets,
            selectors: f.domains,
            default_interval,
            paused,
        })
    }

    /// Every target: the configured ones, then each domain a selector matches (`names` lists
    /// a connection's domains) that no earlier entry names.
    pub fn expand(&self, names: &mut DomainLister<'_>) -> (Vec<Target>, Vec<String>) {
        let mut targets = self.targets.clone();
        let mut errors = Vec::new();
        for s in &self.selectors {
            let list = match names(s.connect.as_deref()) {
                Ok(l) => l,
                Err(e) => {
                    errors.push(format!("domains matching {:?}: {e}", s.pattern));
                    continue;
                }
            };
            for name in list.into_iter().filter(|n| glob(&s.pattern, n)) {
                if targets.iter().any(|t| t.name == name) {
                    continue;
                }
                let snapshots = s.snapshots.clone().map(|mut snap| {
                    snap.store =
                        PathBuf::from(snap.store.to_string_lossy().replace("{name}", &name));
                    snap
                });
                targets.push(Target {
                    name: name.clone(),
                    guest: GuestConf::Domain {
                        name,
                        uri: s.connect.clone(),
                    },
                    attest_interval: s
                        .attest_interval_secs
                        .map(Duration::from_secs)
                        .or(self.default_interval),
                    paused: self.paused,
                    snapshots,
                });
            }
        }
        (targets, errors)
    }
}

/// `*` matches any run of characters (none included), `?` exactly one; all else itself.
pub fn glob(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // Iterative matching with one backtrack point: linear in practice, no recursion.
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ni));
                pi += 1;
            }
            Some(c) if *c == '?' || *c == n[ni] => {
                pi += 1;
                ni += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    pi = sp + 1;
                    ni = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    const BASE: &str = "[server]\nurl = \"http://127.0.0.1:1\"\ntoken_file = \"t\"\n";

    #[test]
    fn globs() {
        for (p, n, want) in [
            ("web-*", "web-1", true),
            ("web-*", "web-", true),
            ("web-*", "db-1", false),
            ("*", "x", true),
            ("w?b", "web", true),
            ("w?b", "wb", false),
            ("*-prod-*", "a-prod-b", true),
            ("*-prod-*", "a-test-b", false),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "aXbY", false),
        ] {
            assert_eq!(glob(p, n), want, "{p} {n}");
        }
    }

    #[test]
    fn domains_and_selectors() {
        let text = format!(
            "{BASE}[[domain]]\nname = \"db\"\nconnect = \"qemu:///session\"\n\
             [domain.snapshots]\nstore = \"/s/db\"\ninterval_secs = 60\nkeys = [\"k\"]\n\
             keep = 48\nkeep_within_secs = 86400\n\
             [[domains]]\nmatch = \"web-*\"\n[domains.snapshots]\nstore = \"/s/{{name}}\"\n\
             interval_secs = 30\ntpm = true\n"
        );
        let c = Config::parse(Path::new("h.toml"), &text).unwrap();
        let (targets, errors) =
            c.expand(&mut |_| Ok(vec!["db".into(), "web-1".into(), "other".into()]));
        assert!(errors.is_empty());
        let names: Vec<&str> = targets.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["db", "web-1"]);
        let snap = targets[1].snapshots.as_ref().unwrap();
        assert_eq!(snap.store, PathBuf::from("/s/web-1"));
        assert!(snap.retention().is_none());
        let kept = targets[0].snapshots.as_ref().unwrap().retention().unwrap();
        assert_eq!((kept.keep, kept.within), (Some(48), Some(86_400)));
    }

    #[test]
    fn refusals_name_the_file_and_field() {
        for (extra, want) in [
            ("bogus = 1\n", "bogus"),
            (
                "[[domain]]\nname = \"a\"\n[[domain]]\nname = \"a\"\n",
                "twice",
            ),
            ("[[domain]]\nname = \"a b\"\n", "A-Za-z0-9"),
            (
                "[[domain]]\nname = \"a\"\n[domain.snapshots]\nstore = \"/s\"\ninterval_secs = 0\nkeys = [\"k\"]\n",
                "domain[0].snapshots.interval_secs",
            ),
            (
                "[[domain]]\nname = \"a\"\n[domain.snapshots]\nstore = \"/s\"\ninterval_secs = 5\nkeys = [\"k\"]\nkeep = 0\n",
                "domain[0].snapshots.keep",
            ),
            (
                "[[domain]]\nname = \"a\"\n[domain.snapshots]\nstore = \"/s\"\ninterval_secs = 5\n",
                "keys = [...] or tpm = true",
            ),
            (
                "[defaults]\nattest_interval_secs = 0\n",
                "defaults.attest_interval_secs",
            ),
            (
                "[[domain]]\nname = \"a\"\n[domain.snapshots]\nstore = \"/s\"\ninterval_secs = 5\nkeys = [\"k\"]\nlive = true\n",
                "domain[0].snapshots.live",
            ),
        ] {
            let e = Config::parse(Path::new("h.toml"), &format!("{BASE}{extra}"))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("h.toml: "), "{e}");
            assert!(e.contains(want), "{want}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }
}
