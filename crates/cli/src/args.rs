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
        #[arg(long)]
        out: PathBuf,
    },
    /// Export the public key of a private key file.
    Pubkey {
        key: PathBuf,
        /// Write here instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Measure images and write a signed measurement record.
    Sign {
        #[arg(required = true)]
        images: Vec<PathBuf>,
        /// Private key file; repeat to co-sign.
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
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
        image: PathBuf,
        #[arg(long)]
        page: u64,
        /// Number of consecutive pages.
        #[arg(long, default_value_t = 1)]
        count: u64,
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        tree: TreeArgs,
    },
    /// Check a page proof against a root or a signed record, without the image.
    VerifyProof {
        proof: PathBuf,
        /// Expected image root (hex).
        #[arg(long, conflicts_with = "record")]
        root: Option<String>,
        /// Signed record whose image root the proof must match.
        #[arg(long, requires = "pubkeys")]
        record: Option<PathBuf>,
        #[arg(long = "pubkey")]
        pubkeys: Vec<PathBuf>,
        /// Write the proven page bytes here.
        #[arg(long)]
        extract: Option<PathBuf>,
    },
    /// Describe a vmattest file (record, signed record, proof) as text or JSON.
    Show { file: PathBuf },
}
