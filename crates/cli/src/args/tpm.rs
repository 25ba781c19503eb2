//! Arguments of `tpm ...`.

use std::path::PathBuf;

use clap::Subcommand;

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
