use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "vmattest",
    version,
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

#[derive(Debug, Subcommand)]
pub enum Command {
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
    Serve(crate::cmd::serve::ServeArgs),
    /// Configuration attestation: measure a VM's configuration into a signed, salted Merkle
    /// root, disclose single parameters, check against a reference (docs/CONFIG.md).
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Internal: started by `snapshot take --vm` while it pauses a guest; resumes the guest if
    /// the capture dies before it does.
    #[command(name = "__guard", hide = true)]
    Guard {
        /// The VM's QMP socket.
        #[arg(long)]
        qmp: PathBuf,
        /// The pause marker the capture writes.
        #[arg(long)]
        marker: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum TpmCommand {
    /// Manufacturer, firmware and PCR banks.
    Info,
    /// Write the public key of the TPM-resident signing key (ECDSA P-384; it never leaves the
    /// TPM) for `--pubkey`, and OUT.certify: the attestation key's certification that the key
    /// lives in this TPM. `snapshot take --signer tpm` signs with it.
    Keygen {
        /// Public key file to write (and OUT.certify beside it).
        #[arg(long)]
        out: PathBuf,
    },
    /// Check, without a TPM, that a public key is certified by a pinned attestation key as a
    /// non-exportable TPM key.
    VerifyKey {
        /// Public key file to check.
        pubkey: PathBuf,
        /// The attestation key's public area, as written by `tpm ak`.
        #[arg(long)]
        ak: PathBuf,
        /// The certification written by `tpm keygen` (default PUBKEY.certify).
        #[arg(long)]
        certify: Option<PathBuf>,
    },
    /// Write the attestation key's public area (TPMT_PUBLIC) for verifiers to pin.
    Ak {
        /// Where to write the attestation key's public area.
        #[arg(long)]
        out: PathBuf,
    },
    /// Extend a SHA-256 PCR with the SHA-256 of a file (a hypervisor binary, a config).
    Extend {
        /// PCR index, 0-23.
        #[arg(long)]
        pcr: u32,
        /// File whose SHA-256 is extended into the PCR.
        #[arg(long)]
        file: PathBuf,
    },
    /// Quote SHA-256 PCRs with the attestation key over a verifier's nonce.
    Quote {
        /// Comma-separated PCR indices, e.g. 0,7,16.
        #[arg(long)]
        pcr: String,
        /// The verifier's nonce, hex.
        #[arg(long)]
        nonce: String,
        /// Quote file to write (JSON, docs/FORMAT.md).
        #[arg(long)]
        out: PathBuf,
    },
    /// Verify a quote against a pinned attestation key and the nonce, without a TPM.
    VerifyQuote {
        /// Quote file to check (`tpm quote` or `--bind-pcr` output).
        quote: PathBuf,
        /// The attestation key's public area, as written by `tpm ak`.
        #[arg(long)]
        ak: PathBuf,
        /// The nonce the quote must carry, hex.
        #[arg(long)]
        nonce: String,
    },
    /// Seal a secret file to the current values of SHA-256 PCRs.
    Seal {
        /// Comma-separated PCR indices whose current values the blob is sealed to, e.g. 0,7.
        #[arg(long)]
        pcr: String,
        /// Secret file to seal (at most 128 bytes).
        #[arg(long = "in")]
        input: PathBuf,
        /// Sealed blob to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Unseal a sealed blob; refused, naming the PCR, when a selected PCR changed.
    Unseal {
        /// Sealed blob to unseal (`tpm seal` output).
        blob: PathBuf,
        /// Written with mode 0600.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Args, Clone)]
pub struct VmArg {
    /// VM spec file, or NAME for `$VMATTEST_VMS/NAME.toml` (default directory `vms`).
    #[arg(long)]
    pub vm: String,
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
    /// Whether the VM runs, its PID and QEMU's run state.
    Status {
        #[command(flatten)]
        vm: VmArg,
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
#[command(group(clap::ArgGroup::new("config_source").required(true).args(["vm", "libvirt"])))]
pub struct ConfigSource {
    /// VM spec file, or NAME for `$VMATTEST_VMS/NAME.toml`.
    #[arg(long)]
    pub vm: Option<String>,
    /// libvirt domain XML, as `virsh dumpxml NAME` prints it.
    #[arg(long)]
    pub libvirt: Option<PathBuf>,
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
        /// The VM's name in the statement (default: the spec's name; required with --libvirt).
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

#[derive(Debug, Args, Clone)]
pub struct StoreArg {
    /// Snapshot store directory.
    #[arg(long)]
    pub store: PathBuf,
}

#[derive(Debug, Args, Clone)]
pub struct VerifyArgs {
    /// Pinned public key; every link must be signed by these.
    #[arg(long = "pubkey", required = true)]
    pub pubkeys: Vec<PathBuf>,
    /// Secret file of an encrypted store.
    #[arg(long)]
    pub secret: Option<PathBuf>,
}

#[derive(Debug, Args, Clone)]
pub struct ComponentArgs {
    /// Guest memory image, `PATH` or `NAME=PATH`; repeatable.
    #[arg(long = "memory")]
    pub memory: Vec<String>,
    /// Disk image (raw), `PATH` or `NAME=PATH`; repeatable.
    #[arg(long = "disk")]
    pub disk: Vec<String>,
    /// Device and CPU state blob, `PATH` or `NAME=PATH`.
    #[arg(long = "device-state")]
    pub device_state: Vec<String>,
    /// VM configuration blob, `PATH` or `NAME=PATH`.
    #[arg(long = "config")]
    pub config: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Create an empty store for one VM.
    Init {
        #[command(flatten)]
        store: StoreArg,
        /// The VM the store holds the chain of; `snapshot take --vm` refuses another VM.
        #[arg(long)]
        vm_id: String,
        #[command(flatten)]
        tree: TreeArgs,
        /// Policy id recorded in the store's metadata.
        #[arg(long, default_value = "default")]
        policy: String,
        /// Encrypt page batches at rest with keys derived from this secret file (created,
        /// mode 0600, when it does not exist; a blob sealed by `tpm seal` is unsealed). Later
        /// commands take the same file as `--secret`.
        #[arg(long, alias = "encrypt-with")]
        secret: Option<PathBuf>,
    },
    /// Capture the components as the next link (the first take is the baseline).
    Take {
        #[command(flatten)]
        store: StoreArg,
        #[command(flatten)]
        components: ComponentArgs,
        /// Capture this running QEMU VM (spec file or NAME) instead of files.
        #[arg(long, conflicts_with_all = ["memory", "disk", "device_state", "config", "dirty"])]
        vm: Option<String>,
        /// Private key; repeat to co-sign.
        #[arg(long = "key", required_unless_present = "signer")]
        keys: Vec<PathBuf>,
        /// `tpm`: (also) sign with the host TPM's resident key; `tpm keygen` exports its
        /// public key for verifiers.
        #[arg(long, value_parser = ["tpm"])]
        signer: Option<String>,
        /// With `--signer tpm`: measure vmattest, the hypervisor and the VM config into this
        /// PCR (16-23, with a replayable event log) and save a TPM quote of PCRs 0-7 and it over
        /// the new link's digest in STORE/quotes/.
        #[arg(long, requires = "signer")]
        bind_pcr: Option<u32>,
        /// `NAME=FILE`: FILE lists the page indices (one per line) that may have changed.
        #[arg(long = "dirty")]
        dirty: Vec<String>,
        /// Secret file of an encrypted store (or a blob sealed to this host's TPM).
        #[arg(long)]
        secret: Option<PathBuf>,
    },
    /// List the links.
    Log {
        #[command(flatten)]
        store: StoreArg,
    },
    /// Verify the chain link by link, rebuilding every page.
    Verify {
        #[command(flatten)]
        store: StoreArg,
        #[command(flatten)]
        verify: VerifyArgs,
        /// Verify only the prefix up to this seq.
        #[arg(long)]
        upto: Option<u64>,
        /// Refuse a head older than this many seconds.
        #[arg(long)]
        max_age: Option<u64>,
    },
    /// Verify and write every component at a seq into a new directory.
    Restore {
        #[command(flatten)]
        store: StoreArg,
        #[command(flatten)]
        verify: VerifyArgs,
        /// Seq to restore [default: the head].
        #[arg(long)]
        seq: Option<u64>,
        /// New directory for the components.
        #[arg(long, required_unless_present = "vm", conflicts_with = "vm")]
        out: Option<PathBuf>,
        /// Roll this QEMU VM (spec file or NAME) back to the seq: its QEMU is replaced by one
        /// that continues from the restored state.
        #[arg(long)]
        vm: Option<String>,
    },
    /// Write links and the pages they need to one bundle file.
    Export {
        #[command(flatten)]
        store: StoreArg,
        /// First seq to export.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Last seq to export [default: the head].
        #[arg(long)]
        to: Option<u64>,
        /// Bundle file to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Verify a bundle completely against pinned keys, then add it to the store.
    Import {
        #[command(flatten)]
        store: StoreArg,
        #[command(flatten)]
        verify: VerifyArgs,
        /// Bundle file to verify and import (`snapshot export` output).
        bundle: PathBuf,
    },
    /// Check the store's files; `--repair` removes leftovers of interrupted writes.
    Fsck {
        #[command(flatten)]
        store: StoreArg,
        /// Remove leftovers of interrupted writes (needs the store lock).
        #[arg(long)]
        repair: bool,
    },
    /// Prove one page of a component at a seq (verifies the chain up to that seq first).
    Prove {
        #[command(flatten)]
        store: StoreArg,
        #[command(flatten)]
        verify: VerifyArgs,
        /// Seq whose state to prove [default: the head].
        #[arg(long)]
        seq: Option<u64>,
        /// Component to prove pages of (as `snapshot log --json` names them).
        #[arg(long)]
        component: String,
        /// First page (4096-byte pages, from 0).
        #[arg(long)]
        page: u64,
        /// Number of consecutive pages.
        #[arg(long, default_value_t = 1)]
        count: u64,
        /// Page proof to write.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Args, Clone)]
pub struct PolicyArgs {
    /// Policy TOML (docs/POLICY.md).
    #[arg(long)]
    pub policy: PathBuf,
    /// The guest kernel's System.map, for regions given by symbols.
    #[arg(long)]
    pub system_map: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Print the resolved policy (ranges only) as TOML, for `remote policy add`.
    Resolve {
        #[command(flatten)]
        policy: PolicyArgs,
    },
    /// Print the id (SHA-256 of the canonical resolved policy) that servers and agents use.
    Id {
        #[command(flatten)]
        policy: PolicyArgs,
    },
}

#[derive(Debug, Args, Clone)]
pub struct ServerArgs {
    /// The attestation server, `http://HOST:PORT` or `https://HOST:PORT`.
    #[arg(long, global = true)]
    pub server: Option<String>,
    /// File holding the bearer token (`remote token` prints one).
    #[arg(long, global = true)]
    pub token_file: Option<PathBuf>,
    /// Trust only this CA certificate (PEM) for the server's TLS certificate.
    #[arg(long, global = true)]
    pub ca_cert: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The attestation server, `http://HOST:PORT` or `https://HOST:PORT`.
    #[arg(long)]
    pub server: String,
    /// File holding this host's agent token.
    #[arg(long)]
    pub token_file: PathBuf,
    /// Trust only this CA certificate (PEM) for the server's TLS certificate.
    #[arg(long)]
    pub ca_cert: Option<PathBuf>,
    #[command(flatten)]
    pub signer: EvidenceSigner,
    #[command(flatten)]
    pub vm: VmArg,
    /// The VM's name on the server (default: the spec's name).
    #[arg(long)]
    pub name: Option<String>,
    /// Attest once and exit: 0 when the result raised no alert, 1 when it did.
    #[arg(long, conflicts_with_all = ["count", "interval"])]
    pub once: bool,
    /// Stop after N rounds.
    #[arg(long)]
    pub count: Option<u64>,
    /// Seconds between rounds (default: the policy's schedule_secs).
    #[arg(long)]
    pub interval: Option<u64>,
    /// Pause the guest while its memory is read, so that the digests are of one instant.
    #[arg(long)]
    pub paused: bool,
    /// The VM's snapshot store: roll the VM back when a result asks for it.
    #[arg(long, requires = "pubkeys")]
    pub store: Option<PathBuf>,
    /// Pinned public key of the store's chain; repeatable.
    #[arg(long = "pubkey", requires = "store")]
    pub pubkeys: Vec<PathBuf>,
    /// Secret file of an encrypted store.
    #[arg(long, requires = "store")]
    pub secret: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum AttestCommand {
    /// Verify the chain up to a seq, then compare the running VM's RAM, raw disks and config
    /// with that snapshot (guest paused while hashed) and sign the report. Exit 1 on mismatch.
    Snapshot {
        #[command(flatten)]
        store: StoreArg,
        #[command(flatten)]
        verify: VerifyArgs,
        /// Seq of the snapshot to compare the running VM with.
        #[arg(long)]
        seq: u64,
        #[command(flatten)]
        vm: VmArg,
        #[command(flatten)]
        signer: EvidenceSigner,
        /// The requester's nonce (hex, at most 64 bytes).
        #[arg(long, default_value = "")]
        nonce: String,
        /// Also write the signed report here.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Also post the report to this server.
        #[arg(long, requires = "token_file")]
        server: Option<String>,
        /// File holding this host's agent token (with --server).
        #[arg(long, requires = "server")]
        token_file: Option<PathBuf>,
        /// Trust only this CA certificate (PEM) for the server's TLS certificate.
        #[arg(long, requires = "server")]
        ca_cert: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct RemoteArgs {
    #[command(flatten)]
    pub conn: ServerArgs,
    #[command(subcommand)]
    pub command: RemoteCommand,
}

#[derive(Debug, Subcommand)]
pub enum RemoteCommand {
    /// The server's status (public).
    Health,
    /// Issue a token (admin); it is printed once.
    Token {
        /// admin, agent or auditor.
        #[arg(long)]
        role: String,
        /// The host an agent token acts for.
        #[arg(long)]
        host: Option<String>,
    },
    /// Tokens by public id (admin); never the tokens themselves.
    Tokens,
    /// Revoke a token at once (admin); the last admin token is kept.
    RevokeToken {
        /// The token's id, as `tokens` and `token --json` print it.
        id: String,
    },
    /// Hosts and their evidence-signing keys.
    #[command(subcommand)]
    Host(RemoteHostCommand),
    /// Resolved region policies.
    #[command(subcommand)]
    Policy(RemotePolicyCommand),
    /// Registered VMs.
    #[command(subcommand)]
    Vm(RemoteVmCommand),
    /// Compute a VM's golden baseline from a snapshot whose chain verifies against pinned keys,
    /// and register it.
    Baseline {
        /// The VM to register the baseline for.
        #[arg(long)]
        vm: String,
        #[command(flatten)]
        store: StoreArg,
        #[command(flatten)]
        verify: VerifyArgs,
        /// Seq of the snapshot the baseline is computed from.
        #[arg(long)]
        seq: u64,
        /// The resolved policy (as `policy resolve` prints it).
        #[arg(long)]
        policy: PathBuf,
        /// The snapshot component holding guest RAM.
        #[arg(long, default_value = "ram")]
        component: String,
    },
    /// A VM's attestation results, newest first.
    Results {
        /// The VM whose results to list.
        #[arg(long)]
        vm: String,
        /// Show at most this many results.
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Alerts, newest first.
    Alerts {
        /// Only this VM's alerts.
        #[arg(long)]
        vm: Option<String>,
    },
    /// A VM's snapshot reports.
    Reports {
        /// The VM whose reports to list.
        #[arg(long)]
        vm: String,
    },
    /// Ask the VM's agent to compare the running VM with snapshot SEQ and send a signed report
    /// (answered on the agent's next round; see `reports`).
    AttestSnapshot {
        /// The VM whose agent is asked.
        #[arg(long)]
        vm: String,
        /// Seq of the snapshot to compare the running VM with.
        #[arg(long)]
        seq: u64,
    },
    /// Snapshot requests of a VM and the reports that answered them.
    SnapshotRequests {
        /// The VM whose requests to list.
        #[arg(long)]
        vm: String,
    },
    /// The public key that signs EARs and webhooks (public).
    EarKey,
}

#[derive(Debug, Subcommand)]
pub enum RemoteHostCommand {
    /// Register a host and its agent's evidence-signing public key.
    Add {
        /// The host's name (1-64 of [A-Za-z0-9._-]).
        #[arg(long)]
        name: String,
        /// The agent's evidence-signing public key.
        #[arg(long)]
        pubkey: PathBuf,
        /// The host TPM's attestation key (`tpm ak`): registers the key as TPM-resident, checked
        /// against its certification.
        #[arg(long)]
        ak: Option<PathBuf>,
        /// The certification `tpm keygen` wrote [default: PUBKEY.certify].
        #[arg(long, requires = "ak")]
        certify: Option<PathBuf>,
    },
    /// Registered hosts and their keys.
    List,
}

#[derive(Debug, Subcommand)]
pub enum RemotePolicyCommand {
    /// Register a resolved policy.
    Add {
        /// Resolved policy TOML (`policy resolve` output).
        #[arg(long)]
        policy: PathBuf,
    },
    /// A registered policy's TOML.
    Show {
        /// Policy id (as `policy id` prints it).
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum RemoteVmCommand {
    /// Register a VM on a host under a policy.
    Add {
        /// The VM's name (1-64 of [A-Za-z0-9._-]).
        #[arg(long)]
        name: String,
        /// The host the VM runs on (`remote host add`).
        #[arg(long)]
        host: String,
        /// Id of the policy its agent attests under (`remote policy add`).
        #[arg(long)]
        policy_id: String,
        /// Subset id the VM may be challenged with; repeatable.
        #[arg(long = "subset", required = true)]
        subsets: Vec<String>,
        /// Scores below this (0-100) raise an alert.
        #[arg(long)]
        threshold: u8,
        /// Webhook URL that receives each alert, signed (HMAC-SHA256) with the secret.
        #[arg(long, requires = "webhook_secret_file")]
        webhook_url: Option<String>,
        /// File holding the webhook's HMAC key (at least 16 bytes).
        #[arg(long, requires = "webhook_url")]
        webhook_secret_file: Option<PathBuf>,
        /// `rollback`: the agent rolls the VM back to its baseline's snapshot on an alert.
        #[arg(long, value_parser = ["none", "rollback"], default_value = "none")]
        on_alert: String,
    },
    /// A registered VM, its policy, threshold and baseline.
    Show {
        /// The VM's name.
        name: String,
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
