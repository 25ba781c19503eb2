use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::LaunchReference;

#[derive(Debug, Subcommand)]
pub enum LibvirtCommand {
    /// Install the launch gate: a libvirt hook that measures each domain's XML before it
    /// starts (at `prepare begin` and again at `start begin`) and refuses a domain whose
    /// configuration does not meet the reference. libvirt looks for hooks when it starts:
    /// restart libvirtd after the first install.
    InstallHook {
        #[command(flatten)]
        gate: HookArgs,
        /// The hook directory [default: libvirt's, /etc/libvirt/hooks/qemu.d].
        #[arg(long)]
        hooks_dir: Option<PathBuf>,
    },
    /// Remove the launch gate `install-hook` wrote (for --domain, or the one for every domain).
    UninstallHook {
        /// The domain whose gate to remove [default: the gate of every domain].
        #[arg(long)]
        domain: Option<String>,
        /// The hook directory [default: libvirt's, /etc/libvirt/hooks/qemu.d].
        #[arg(long)]
        hooks_dir: Option<PathBuf>,
    },
    /// Internal: what the installed hook runs; libvirt's `NAME OP SUBOP EXTRA` follow `--`.
    #[command(hide = true)]
    Hook {
        #[command(flatten)]
        gate: HookArgs,
        /// libvirt's arguments.
        #[arg(last = true, required = true)]
        libvirt_args: Vec<String>,
    },
}

/// What the launch gate checks domains against, and which domains it gates.
#[derive(Debug, Args, Clone)]
pub struct HookArgs {
    #[command(flatten)]
    pub reference: LaunchReference,
    /// With --server: the host's evidence-signing private key, which signs each measurement.
    #[arg(long, requires = "server", conflicts_with = "signer")]
    pub key: Option<PathBuf>,
    /// With --server: `tpm` signs each measurement with the TPM-resident key.
    #[arg(long, requires = "server", value_parser = ["tpm"])]
    pub signer: Option<String>,
    /// Gate only this domain [default: every domain].
    #[arg(long)]
    pub domain: Option<String>,
    /// Start a domain anyway when the server cannot be reached (a mismatch still refuses it);
    /// by default the gate fails closed.
    #[arg(long, requires = "server")]
    pub fail_open: bool,
}
