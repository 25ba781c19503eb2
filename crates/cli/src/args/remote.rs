//! Arguments of `agent`, `attest ...` and `remote ...`.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::{EvidenceSigner, GuestArg, StoreArg, VerifyArgs};

#[derive(Debug, Args, Clone)]
pub struct ServerArgs {
    /// The attestation server, `http://HOST:PORT` or `https://HOST:PORT` [default: the
    /// client config's `server`].
    #[arg(long, global = true, env = "VMATTEST_SERVER")]
    pub server: Option<String>,
    /// File holding the bearer token (`remote token --out` writes one).
    #[arg(long, global = true, env = "VMATTEST_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Trust only this CA certificate (PEM) for the server's TLS certificate.
    #[arg(long, global = true, env = "VMATTEST_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The attestation server, `http://HOST:PORT` or `https://HOST:PORT`.
    #[arg(long, env = "VMATTEST_SERVER")]
    pub server: String,
    /// File holding this host's agent token.
    #[arg(long, env = "VMATTEST_TOKEN_FILE")]
    pub token_file: PathBuf,
    /// Trust only this CA certificate (PEM) for the server's TLS certificate.
    #[arg(long, env = "VMATTEST_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    #[command(flatten)]
    pub signer: EvidenceSigner,
    #[command(flatten)]
    pub vm: GuestArg,
    /// The VM's name on the server (default: the spec's or the domain's name).
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
        vm: GuestArg,
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
    /// Issue a token (admin); it is shown once: printed, or written to --out.
    Token {
        /// admin, agent or auditor.
        #[arg(long)]
        role: String,
        /// The host an agent token acts for.
        #[arg(long)]
        host: Option<String>,
        /// Write the token to this new file (mode 0600) instead of printing it.
        #[arg(long)]
        out: Option<PathBuf>,
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
    /// Host policies: what the hosts of a group must quote.
    #[command(subcommand)]
    HostPolicy(RemoteHostPolicyCommand),
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
    /// Active alerts (open or acknowledged), newest first: one per VM and cause.
    Alerts {
        /// Only this VM's alerts.
        #[arg(long)]
        vm: Option<String>,
        /// Resolved alerts too.
        #[arg(long)]
        all: bool,
    },
    /// Acknowledge an alert (admin): repeats of its cause are counted in it without new
    /// webhooks until a passing result resolves it.
    AckAlert {
        /// The alert's id, as `alerts` prints it.
        id: i64,
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
    /// The EAR keys as a JWKS: the current one and those it replaced (public).
    Jwks,
    /// Replace the EAR signing key (admin); the old key stays in the JWKS, so results it
    /// signed still verify.
    RotateEarKey {
        /// Key type of the new key: ed25519 or p384 [default: the current key's].
        #[arg(long, value_parser = ["ed25519", "p384"])]
        alg: Option<String>,
    },
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
        /// The host group whose host policy appraises the host's quotes [default: default].
        #[arg(long)]
        group: Option<String>,
    },
    /// Registered hosts and their keys.
    List,
    /// Quote this host's TPM (`VMATTEST_TPM_TCTI`) over a server nonce and have the server
    /// appraise it against the host policy of the host's group (an agent token of the host).
    Attest {
        /// The host's name, as registered.
        #[arg(long)]
        name: String,
        /// Also quote this PCR (16-23), with vmattest's version measured into it and its event
        /// log.
        #[arg(long)]
        pcr: Option<u32>,
    },
    /// A host's appraisals, newest first.
    Attestations {
        /// The host's name, as registered.
        #[arg(long)]
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum RemoteHostPolicyCommand {
    /// Create or replace a host group's policy: golden PCR values and required events.
    Set {
        /// The host group.
        #[arg(long)]
        group: String,
        /// `N=HEX`: PCR N must have this SHA-256 value; repeatable.
        #[arg(long = "pcr")]
        pcrs: Vec<String>,
        /// Take every PCR value listed in this quote file (`tpm quote`) as golden.
        #[arg(long)]
        quote: Option<PathBuf>,
        /// `PCR:KIND=VALUE`: the host's event log must hold this event; repeatable.
        #[arg(long = "event")]
        events: Vec<String>,
    },
    /// Host policies by group.
    List,
    /// Delete a host group's policy.
    Delete {
        /// The host group.
        #[arg(long)]
        group: String,
    },
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
    /// Move a registered VM to another registered policy. Its baseline is then the newest one
    /// taken for that policy: take it first (`remote baseline --policy NEW`) to attest on.
    SetPolicy {
        /// The VM's name.
        #[arg(long)]
        name: String,
        /// Id of the policy to move to (`remote policy add`).
        #[arg(long)]
        policy_id: String,
        /// Subset ids the VM may be challenged with, replacing the current ones; repeatable.
        #[arg(long = "subset")]
        subsets: Vec<String>,
    },
    /// A registered VM, its policy, threshold and baseline.
    Show {
        /// The VM's name.
        name: String,
    },
    /// Have the server hold the VM chain's store secret (sealed at rest) and release it only to
    /// the VM's host and the hosts named, each while its quote satisfies its host policy.
    PutKey {
        /// The VM whose chain the key opens.
        #[arg(long)]
        name: String,
        /// The store secret: a secret file, or a blob sealed to this host's TPM.
        #[arg(long)]
        secret: PathBuf,
        /// A host the key may be released to; repeatable.
        #[arg(long = "release-to")]
        release_to: Vec<String>,
    },
    /// On a destination host: quote this host's TPM, receive the VM's key wrapped for it,
    /// unwrap it in the TPM and seal it to this host's PCRs into a new file for `--secret`.
    ReleaseKey {
        /// The VM whose key to receive.
        #[arg(long)]
        name: String,
        /// This host's name, as registered (its agent token's host).
        #[arg(long)]
        host: String,
        /// The sealed secret to write (a new file, mode 0600).
        #[arg(long)]
        out: PathBuf,
        /// Also quote this PCR (16-23), with vmattest's version measured into it.
        #[arg(long)]
        pcr: Option<u32>,
        /// The PCRs the secret is sealed to on this host.
        #[arg(long, default_value = "0,1,2,3,4,5,6,7")]
        seal_pcr: String,
    },
}
