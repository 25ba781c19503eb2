use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

mod libvirt;
mod remote;
mod snapshot;
mod tpm;
mod vm;

pub use libvirt::*;
pub use remote::*;
pub use snapshot::*;
pub use tpm::*;
pub use vm::*;

#[derive(Debug, Parser)]
#[command(
    name = "vmattest",
    about = "Attested VM snapshots: measure, sign, verify and prove."
)]
pub struct Cli {
    /// Print machine-readable JSON on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args, Clone)]
pub struct TreeArgs {
    /// Tree algorithm: blake3 (root = b3sum), sha256 or sha384 (root = veritysetup format).
    #[arg(long, default_value = "blake3")]
    pub alg: String,
    /// dm-verity salt as hex (sha256/sha384 only); empty means no salt, like `--salt -`.
    #[arg(long, default_value = "")]
    pub salt: String,
}

/// Images and signed records.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Print the root and page count of each image.
    Measure {
        /// Image files (raw bytes; a block device works too).
        #[arg(required = true)]
        images: Vec<PathBuf>,
        #[command(flatten)]
        tree: TreeArgs,
        /// Also write the dm-verity hash device (sha256/sha384, one image) for `veritysetup verify`.
        #[arg(long)]
        hash_device: Option<PathBuf>,
    },
    /// Generate a signing key: OUT (private, mode 0600) and OUT.pub (public).
    Keygen {
        /// ed25519, p384, ml-dsa-65 or hybrid (Ed25519 + ML-DSA-65).
        #[arg(long)]
        alg: String,
        /// Private key file to write; the public key goes to OUT.pub.
        #[arg(long)]
        out: PathBuf,
    },
    /// Export the public key of a private key file.
    Pubkey {
        /// Private key file (mode 0600).
        key: PathBuf,
        /// Write here instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Measure images and write a signed measurement record.
    Sign {
        /// Image files to measure into the record.
        #[arg(required = true)]
        images: Vec<PathBuf>,
        /// Private key file; repeat to co-sign.
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
        /// Signed record to write.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        tree: TreeArgs,
        /// Verifier-supplied nonce (hex, at most 64 bytes) to bind into the record.
        #[arg(long, default_value = "")]
        nonce: String,
    },
    /// Verify a signed record against pinned public keys.
    Verify {
        /// Signed record to check.
        record: PathBuf,
        /// Public key file; every signature must come from one of these.
        #[arg(long = "pubkey", required = true)]
        pubkeys: Vec<PathBuf>,
        /// Re-measure each recorded image at its recorded path and compare roots.
        #[arg(long)]
        check_images: bool,
        /// Refuse records older than this many seconds.
        #[arg(long)]
        max_age: Option<u64>,
        /// Require this nonce (hex) in the record.
        #[arg(long)]
        nonce: Option<String>,
    },
    /// Write an inclusion proof for page N (or a range) of an image.
    Prove {
        /// Image file to prove pages of.
        image: PathBuf,
        /// First page (4096-byte pages, from 0).
        #[arg(long)]
        page: u64,
        /// Number of consecutive pages.
        #[arg(long, default_value_t = 1)]
        count: u64,
        /// Page proof to write.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        tree: TreeArgs,
    },
    /// Check a page proof against a root or a signed record, without the image.
    VerifyProof {
        /// Page proof to check.
        proof: PathBuf,
        /// Expected image root (hex).
        #[arg(long, conflicts_with = "record")]
        root: Option<String>,
        /// Signed record whose image root the proof must match.
        #[arg(long, requires = "pubkeys")]
        record: Option<PathBuf>,
        /// Pinned public key of the record's signers (with --record); repeatable.
        #[arg(long = "pubkey")]
        pubkeys: Vec<PathBuf>,
        /// Write the proven page bytes here.
        #[arg(long)]
        extract: Option<PathBuf>,
    },
    /// Describe a vmattest file (record, signed record, proof) as text or JSON.
    Show {
        /// A record, signed record, link or page proof.
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum Command {
    #[command(flatten)]
    Image(ImageCommand),
    /// Snapshot chains: incremental, signed, verifiable, portable.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// QEMU virtual machines described by a spec file.
    #[command(subcommand)]
    Vm(VmCommand),
    /// The host's TPM 2.0 (`/dev/tpmrm0`, or the TCTI in `$VMATTEST_TPM_TCTI`).
    #[command(subcommand)]
    Tpm(TpmCommand),
    /// Region policies: resolve kernel symbols into guest-physical ranges, print the policy id.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Attest a running VM to the server: answer its challenges with signed evidence of the
    /// guest's memory, on the policy's schedule.
    Agent(AgentArgs),
    /// Compare a running VM with an attested snapshot of its chain.
    #[command(subcommand)]
    Attest(AttestCommand),
    /// Administer and audit an attestation server (`--server URL --token-file F`).
    Remote(RemoteArgs),
    /// Run the attestation server (docs/API.md): SQLite in the state dir unless --db says otherwise.
    Serve(vmattest_server::options::ServeArgs),
    /// Run the host daemon: every VM of its config attested and snapshotted on schedule
    /// (docs/OPERATIONS.md). SIGHUP reloads the config; SIGTERM stops between captures.
    Hostd {
        /// The daemon's config file.
        #[arg(long, default_value = "/etc/vmattest/host.toml")]
        config: PathBuf,
        /// Log lines as text or json (to stderr).
        #[arg(long, default_value = "text", value_parser = ["text", "json"])]
        log_format: String,
        /// Check the config and list its VMs, then exit.
        #[arg(long)]
        check: bool,
    },
    /// What the host daemon last did for each VM.
    #[command(subcommand)]
    Host(HostCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish or powershell) on stdout.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write a man page for vmattest and each of its commands into DIR.
    Manpages {
        /// The directory to write `vmattest.1`, `vmattest-snapshot.1`, ... into (created).
        dir: PathBuf,
    },
    /// Configuration attestation: measure a VM's configuration into a signed, salted Merkle
    /// root, disclose single parameters, check against a reference (docs/CONFIG.md).
    #[command(subcommand)]
    Config(ConfigCommand),
    /// libvirt: the launch gate that refuses domains whose configuration does not meet a
    /// reference (docs/LIBVIRT.md).
    #[command(subcommand)]
    Libvirt(LibvirtCommand),
    /// Internal: started by `snapshot take --vm` while it pauses a guest; resumes the guest if
    /// the capture dies before it does.
    #[command(name = "__guard", hide = true)]
    Guard {
        /// The VM's QMP socket.
        #[arg(long, required_unless_present = "domain")]
        qmp: Option<PathBuf>,
        /// The libvirt domain, instead of a QMP socket.
        #[arg(long, conflicts_with = "qmp")]
        domain: Option<String>,
        /// The libvirt URI of --domain.
        #[arg(long, requires = "domain")]
        connect: Option<String>,
        /// The pause marker the capture writes.
        #[arg(long)]
        marker: PathBuf,
    },
}

/// The version and the cargo features this binary was built with.
pub fn version() -> &'static str {
    static VERSION: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        let features: Vec<&str> = [
            (cfg!(feature = "tpm"), "tpm"),
            (cfg!(feature = "libvirt"), "libvirt"),
            (cfg!(feature = "fault-injection"), "fault-injection"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
        let features = if features.is_empty() {
            "none".to_owned()
        } else {
            features.join(", ")
        };
        format!("{} (features: {features})", env!("CARGO_PKG_VERSION"))
    });
    &VERSION
}

/// The command line definition, with its version: for parsing, completions and man pages.
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command().version(version())
}

/// Parses the process's arguments (clap prints help, version and usage errors and exits).
pub fn parse() -> Cli {
    let matches = command().get_matches();
    <Cli as clap::FromArgMatches>::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

#[derive(Debug, Subcommand)]
pub enum HostCommand {
    /// Each VM's last snapshot, last attestation and last error, from the daemon's status file.
    Status {
        /// The daemon's config file (its state_dir holds the status).
        #[arg(long, default_value = "/etc/vmattest/host.toml")]
        config: PathBuf,
        /// Read the status from this state directory instead.
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::Cli;

    /// Every option and argument of every command says what it is for in `--help`.
    #[test]
    fn every_option_has_a_description() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in cmd.get_arguments() {
                let id = a.get_id().as_str();
                if a.is_hide_set() || matches!(id, "help" | "version") {
                    continue;
                }
                if a.get_help().is_none() && a.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.is_hide_set() {
                    continue;
                }
                if sub.get_about().is_none() {
                    missing.push(format!("{path} {} (command)", sub.get_name()));
                }
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "vmattest", &mut missing);
        assert!(
            missing.is_empty(),
            "no description:\n{}",
            missing.join("\n")
        );
    }
}
