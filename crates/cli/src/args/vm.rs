//! Arguments of `vm ...`, `config ...` and the signer of evidence.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::ServerArgs;

#[derive(Debug, Args, Clone)]
pub struct VmArg {
    /// VM spec file, or NAME for `$VMATTEST_VMS/NAME.toml` (default directory `vms`).
    #[arg(long)]
    pub vm: String,
}

/// The running guest a command acts on: a VM vmattest started from its spec, or a libvirt
/// domain.
#[derive(Debug, Args, Clone)]
#[group(skip)]
#[command(group(clap::ArgGroup::new("guest").required(true).args(["vm", "domain"])))]
pub struct GuestArg {
    /// VM spec file, or NAME for `$VMATTEST_VMS/NAME.toml` (default directory `vms`).
    #[arg(long)]
    pub vm: Option<String>,
    /// A running libvirt domain by name (its RAM must be a shared file: docs/LIBVIRT.md).
    #[arg(long, conflicts_with = "vm")]
    pub domain: Option<String>,
    /// The libvirt URI of --domain [default: qemu:///system].
    #[arg(long, requires = "domain")]
    pub connect: Option<String>,
}

/// A libvirt domain instead of a spec.
#[derive(Debug, Args, Clone)]
pub struct DomainArgs {
    /// A libvirt domain by name (its RAM must be a shared file: docs/LIBVIRT.md).
    #[arg(long)]
    pub domain: Option<String>,
    /// The libvirt URI of --domain [default: qemu:///system].
    #[arg(long, requires = "domain")]
    pub connect: Option<String>,
}

// Parsed once per process: the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Start the VM (its RAM lives in a shared file under the spec's run_dir).
    Start {
        #[command(flatten)]
        vm: VmArg,
        /// Wait until the serial console prints a line containing this text.
        #[arg(long)]
        wait_for: Option<String>,
        /// Seconds to wait for `--wait-for`.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
    /// Stop the VM: QMP quit, then SIGTERM and SIGKILL to its recorded PID.
    Stop {
        #[command(flatten)]
        vm: VmArg,
    },
    /// Whether the VM runs, its PID and QEMU's run state; for a libvirt domain, libvirt's
    /// state and whether vmattest can capture it.
    Status {
        /// VM spec file, or NAME for `$VMATTEST_VMS/NAME.toml` (default directory `vms`).
        #[arg(long, required_unless_present = "domain", conflicts_with = "domain")]
        vm: Option<String>,
        #[command(flatten)]
        domain: DomainArgs,
    },
    /// Measure the VM's configuration, check it against a reference (locally or on the
    /// server), and start the VM (as `vm start`) only when every parameter matches.
    Launch {
        #[command(flatten)]
        vm: VmArg,
        #[command(flatten)]
        reference: LaunchReference,
        #[command(flatten)]
        signer: EvidenceSigner,
        #[command(flatten)]
        packages: PackageSource,
        /// The VM's name in the signed statement and on the server (default: the spec's name).
        #[arg(long)]
        name: Option<String>,
        /// Wait until the serial console prints a line containing this text.
        #[arg(long)]
        wait_for: Option<String>,
        /// Seconds to wait for `--wait-for`.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
        /// Keep the opening and the signed statement in this directory (default: a temporary
        /// directory, removed afterwards).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Overwrite an existing opening and statement in `--out`.
        #[arg(long)]
        force: bool,
        /// Once the configuration is accepted, measure its root into this PCR (16-23) and
        /// quote it over the statement (DIR/config.quote.json): later `snapshot take --vm
        /// --bind-pcr` quotes of that PCR then record the launched configuration.
        #[arg(long)]
        bind_pcr: Option<u32>,
    },
}

/// Where `vm launch` checks the measured configuration: a local reference file or a server.
#[derive(Debug, Args, Clone)]
#[group(skip)]
#[command(group(clap::ArgGroup::new("gate").required(true).args(["reference", "server"])))]
pub struct LaunchReference {
    /// Reference configuration (TOML, docs/CONFIG.md) to check locally.
    #[arg(long, conflicts_with_all = ["server", "token_file", "ca_cert"])]
    pub reference: Option<PathBuf>,
    /// The attestation server that holds the VM's reference configuration.
    #[arg(long, requires = "token_file")]
    pub server: Option<String>,
    /// File holding this host's agent token.
    #[arg(long, requires = "server")]
    pub token_file: Option<PathBuf>,
    /// Trust only this CA certificate (PEM) for the server's TLS certificate.
    #[arg(long, requires = "server")]
    pub ca_cert: Option<PathBuf>,
    /// The server's pinned EAR key (the JSON of `vmattest remote ear-key --json`): the launch
    /// then rests on the server's signed verdict, not on its TLS connection.
    #[arg(long, requires = "server")]
    pub server_key: Option<PathBuf>,
}

/// The configuration to measure: a VM spec or libvirt domain XML, plus optionally the guest's
/// installed packages.
#[derive(Debug, Args, Clone)]
#[group(skip)]
#[command(group(clap::ArgGroup::new("config_source").required(true).args(["vm", "libvirt", "domain"])))]
pub struct ConfigSource {
    /// VM spec file, or NAME for `$VMATTEST_VMS/NAME.toml`.
    #[arg(long)]
    pub vm: Option<String>,
    /// libvirt domain XML, as `virsh dumpxml NAME` prints it.
    #[arg(long)]
    pub libvirt: Option<PathBuf>,
    /// A libvirt domain by name: its definition, as libvirt would start it.
    #[arg(long)]
    pub domain: Option<String>,
    /// The libvirt URI of --domain [default: qemu:///system].
    #[arg(long, requires = "domain")]
    pub connect: Option<String>,
    #[command(flatten)]
    pub packages: PackageSource,
}

/// Where the guest's installed packages come from (at most one).
#[derive(Debug, Clone, clap::Args)]
pub struct PackageSource {
    /// Package manifest: `dpkg-query -W -f '${Package} ${Version}\n'` output.
    #[arg(long, conflicts_with_all = ["dpkg_status", "packages_from_image"])]
    pub packages: Option<PathBuf>,
    /// A dpkg status file (`/var/lib/dpkg/status`).
    #[arg(long, conflicts_with = "packages_from_image")]
    pub dpkg_status: Option<PathBuf>,
    /// A raw ext2/3/4 file system image to read `/var/lib/dpkg/status` from (needs debugfs).
    #[arg(long)]
    pub packages_from_image: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Measure a configuration into DIR: `config.opening` (every parameter with its salt,
    /// mode 0600; keep it private) and `config.statement` (the signed root).
    Measure {
        #[command(flatten)]
        source: ConfigSource,
        #[command(flatten)]
        signer: EvidenceSigner,
        /// The VM's name in the statement (default: the spec's name, or the domain's `<name>`).
        #[arg(long)]
        name: Option<String>,
        /// Directory for `config.opening` and `config.statement` (created).
        #[arg(long)]
        out: PathBuf,
        /// Overwrite an existing opening and statement.
        #[arg(long)]
        force: bool,
        /// Measure the config root into this PCR (16-23) and quote the boot PCRs and it over
        /// the statement: DIR/config.quote.json (needs the TPM).
        #[arg(long)]
        bind_pcr: Option<u32>,
    },
    /// Print the parameters and values of a measured configuration.
    Show {
        /// Measurement directory (`config measure --out`).
        dir: PathBuf,
    },
    /// Write a proof that discloses one parameter under the signed statement.
    Disclose {
        /// Measurement directory (`config measure --out`).
        dir: PathBuf,
        /// Name of the parameter to disclose.
        #[arg(long)]
        param: String,
        /// Disclosure proof to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Check a disclosure proof and its statement's signatures against pinned keys.
    VerifyDisclosure {
        /// Disclosure proof to check (`config disclose` output).
        proof: PathBuf,
        /// Public key file; every signature must come from one of these.
        #[arg(long = "pubkey", required = true)]
        pubkeys: Vec<PathBuf>,
    },
    /// Check a measured configuration against a reference (TOML); exit 1 on any mismatch.
    Check {
        /// Measurement directory (`config measure --out`).
        dir: PathBuf,
        /// Reference configuration (TOML, docs/CONFIG.md).
        #[arg(long)]
        reference: PathBuf,
    },
    /// Store a VM's reference configuration on the server (admin).
    PushReference {
        #[command(flatten)]
        conn: ServerArgs,
        /// The VM's name on the server.
        #[arg(long)]
        vm: String,
        /// Reference configuration (TOML, docs/CONFIG.md).
        #[arg(long)]
        reference: PathBuf,
    },
}

/// The key that signs evidence and reports: a key file, or the host TPM's signing key.
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
pub struct EvidenceSigner {
    /// The host's evidence-signing private key (its public key is registered with the host).
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// `tpm`: sign with the TPM-resident key of `tpm keygen` (registered with --ak).
    #[arg(long, value_parser = ["tpm"])]
    pub signer: Option<String>,
}
