//! Arguments of `snapshot ...` and `policy ...`.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::TreeArgs;

#[derive(Debug, Args, Clone)]
pub struct StoreArg {
    /// Snapshot store directory.
    #[arg(long)]
    pub store: PathBuf,
}

#[derive(Debug, Args, Clone)]
pub struct VerifyArgs {
    /// Pinned public key: the chain's first link must be signed by these, and later links
    /// by the keys its rotations and revocations lead to.
    #[arg(long = "pubkey", required = true)]
    pub pubkeys: Vec<PathBuf>,
    /// Secret file of an encrypted store.
    #[arg(long)]
    pub secret: Option<PathBuf>,
    /// A key revocation (`snapshot revoke --out`) to honour beside the ones the store keeps;
    /// repeatable.
    #[arg(long = "revocation")]
    pub revocations: Vec<PathBuf>,
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
        /// Keep only the head's page digests, not a full copy of its images: the store is
        /// about the size of its bundle, every changed page is stored whole rather than as an
        /// XOR with its previous bytes, and restoring the head decodes the chain.
        #[arg(long)]
        no_head_cache: bool,
        /// Consider every Nth seq for an anchor link, which stores every page changed since
        /// the previous anchor so that a restore skips the links before it; it is made when
        /// those links rewrote the same pages (at least twice as many page writes as distinct
        /// pages). 0 makes anchors only on demand (`snapshot take --anchor`).
        #[arg(long, value_name = "N", default_value_t = vmattest_store::DEFAULT_ANCHOR_EVERY)]
        anchor_every: u32,
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
        /// Capture this running libvirt domain instead of files (see --connect).
        #[arg(long, conflicts_with_all = ["vm", "memory", "disk", "device_state", "config", "dirty"])]
        domain: Option<String>,
        /// The libvirt URI of --domain [default: qemu:///system].
        #[arg(long, requires = "domain")]
        connect: Option<String>,
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
        /// With --vm: keep the guest running while its RAM is read from a QEMU background
        /// snapshot; the pause no longer grows with its RAM. Guest RAM must be on shared
        /// memory (a run_dir under /dev/shm), and the capture needs room there for a second
        /// copy of the guest's non-zero pages meanwhile.
        #[arg(long, requires = "vm")]
        live: bool,
        /// Make this link an anchor now (the store also makes one every `--anchor-every`
        /// seqs): it stores every page changed since the previous anchor, so restoring any
        /// later seq skips the links before it.
        #[arg(long)]
        anchor: bool,
        /// Rotate the chain's signing key to this private key: it co-signs this link with the
        /// keys in force, and signs in their place from the next take on; repeatable.
        #[arg(long = "rotate-key")]
        rotate_keys: Vec<PathBuf>,
        /// With the baseline (first) take: a public key allowed to revoke the chain's keys and
        /// name successors (`snapshot revoke`); repeatable.
        #[arg(long = "revoker")]
        revokers: Vec<PathBuf>,
    },
    /// Revoke a signing key of the chain from a seq on. Signed by the key itself, or by the
    /// revokers the baseline announced, who may name keys that sign in its place. Verifiers
    /// refuse the key's links from that seq.
    Revoke {
        #[command(flatten)]
        store: StoreArg,
        #[command(flatten)]
        verify: VerifyArgs,
        /// Public key to revoke.
        #[arg(long)]
        revoke: PathBuf,
        /// First seq the key may not sign.
        #[arg(long)]
        from: u64,
        /// Private key signing the revocation (the revoked key, or a revoker); repeatable.
        #[arg(long = "key", required_unless_present = "signer")]
        keys: Vec<PathBuf>,
        /// `tpm`: (also) sign with the host TPM's resident key.
        #[arg(long, value_parser = ["tpm"])]
        signer: Option<String>,
        /// Public key that signs in the revoked key's place (revokers only); repeatable.
        #[arg(long = "successor")]
        successors: Vec<PathBuf>,
        /// Why, in at most 256 bytes; kept in the signed revocation.
        #[arg(long, default_value = "")]
        reason: String,
        /// Also write the signed revocation here, for verifiers of copies of the chain.
        #[arg(long)]
        out: Option<PathBuf>,
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
        #[arg(long, required_unless_present_any = ["vm", "domain"], conflicts_with_all = ["vm", "domain"])]
        out: Option<PathBuf>,
        /// Roll this QEMU VM (spec file or NAME) back to the seq: its QEMU is replaced by one
        /// that continues from the restored state.
        #[arg(long, conflicts_with = "domain")]
        vm: Option<String>,
        /// Roll this libvirt domain back to the seq, or migrate the chain into it (another
        /// name, another host): libvirt starts it from the restored state and manages it.
        #[arg(long)]
        domain: Option<String>,
        /// The libvirt URI of --domain [default: qemu:///system].
        #[arg(long, requires = "domain")]
        connect: Option<String>,
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
    /// Fold the oldest seqs under a signed rebase (verified first); every kept seq restores
    /// as before. A seq goes only when every rule given lets it go.
    Prune {
        #[command(flatten)]
        store: StoreArg,
        #[command(flatten)]
        verify: VerifyArgs,
        /// Keep the newest N seqs (at least 1).
        #[arg(long, required_unless_present = "keep_within")]
        keep: Option<u64>,
        /// Keep every seq younger than this (`7d`, `12h`, `30m`, `90s`), and the state in
        /// effect that long ago.
        #[arg(long)]
        keep_within: Option<String>,
        /// Private key to sign the rebase; repeatable. Of those given, the chain's keys in
        /// force after the first kept seq sign (all of them must be given).
        #[arg(long = "key", required_unless_present = "signer")]
        keys: Vec<PathBuf>,
        /// `tpm`: (also) sign with the host TPM's resident key.
        #[arg(long, value_parser = ["tpm"])]
        signer: Option<String>,
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
