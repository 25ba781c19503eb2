//! One module per group of subcommands. Each parses nothing itself (clap did), calls one
//! library workflow and prints; the argument conversions they share live here, so that no
//! command module imports another.

mod agent;
mod config;
mod hostattest;
mod hostd;
mod image;
mod libvirt;
mod policy;
mod remote;
mod serve;
mod snapshot;
mod tpm;
mod vm;

use std::time::Duration;

use vmattest_core::tree::TreeParams;
use vmattest_host::keys::SignerChoice;
use vmattest_host::measurement::Packages;
use vmattest_host::{Verifier, record};

use crate::args::{
    Cli, Command, EvidenceSigner, GuestArg, PackageSource, ServerArgs, TreeArgs, VerifyArgs,
};

pub fn run(cli: Cli) -> anyhow::Result<()> {
    let json = cli.json;
    match cli.command {
        Command::Image(cmd) => image::run(cmd, json),
        Command::Snapshot(cmd) => snapshot::run(cmd, json),
        Command::Vm(cmd) => vm::run(cmd, json),
        Command::Tpm(cmd) => tpm::run(cmd, json),
        Command::Policy(cmd) => policy::run(cmd, json),
        Command::Agent(args) => agent::run(args, json),
        Command::Attest(cmd) => agent::attest(cmd, json),
        Command::Remote(args) => remote::run(args, json),
        Command::Serve(args) => serve::run(args, json),
        Command::Hostd {
            config,
            log_format,
            check,
        } => hostd::run(&config, &log_format, check, json),
        Command::Host(cmd) => hostd::host(cmd, json),
        Command::Completions { shell } => {
            let mut cmd = crate::args::command();
            clap_complete::generate(shell, &mut cmd, "vmattest", &mut std::io::stdout());
            Ok(())
        }
        Command::Manpages { dir } => manpages(&dir, json),
        Command::Config(cmd) => config::run(cmd, json),
        Command::Libvirt(cmd) => libvirt::run(cmd, json),
        Command::Guard {
            qmp,
            domain,
            connect,
            marker,
        } => vm::guard(
            qmp.as_deref(),
            domain.as_deref(),
            connect.as_deref(),
            &marker,
        ),
    }
}

pub fn tree_params(args: &TreeArgs) -> anyhow::Result<TreeParams> {
    Ok(record::tree_params(&args.alg, &args.salt)?)
}

pub fn signer_choice(s: &EvidenceSigner) -> SignerChoice {
    match &s.key {
        Some(k) => SignerChoice::KeyFile(k.clone()),
        None => SignerChoice::Tpm,
    }
}

pub fn verifier(v: &VerifyArgs) -> anyhow::Result<Verifier> {
    Ok(Verifier::load(&v.pubkeys, v.secret.as_deref())?.with_revocations(&v.revocations)?)
}

pub fn packages(p: &PackageSource) -> Packages {
    match (&p.packages, &p.dpkg_status, &p.packages_from_image) {
        (Some(m), _, _) => Packages::Manifest(m.clone()),
        (None, Some(s), _) => Packages::DpkgStatus(s.clone()),
        (None, None, Some(i)) => Packages::Image(i.clone()),
        (None, None, None) => Packages::None,
    }
}

/// The guest of `--vm` or `--domain`, loaded (one per process: its size does not matter).
#[allow(clippy::large_enum_variant)]
pub enum LoadedGuest {
    Spec(vmattest_qemu::VmSpec),
    Domain { name: String, uri: Option<String> },
}

impl LoadedGuest {
    pub fn load(arg: &GuestArg) -> anyhow::Result<LoadedGuest> {
        match (&arg.vm, &arg.domain) {
            (Some(vm), _) => Ok(LoadedGuest::Spec(vmattest_host::vm::load_spec(vm)?)),
            (None, Some(name)) => Ok(LoadedGuest::Domain {
                name: name.clone(),
                uri: arg.connect.clone(),
            }),
            (None, None) => anyhow::bail!("give --vm SPEC or --domain NAME"),
        }
    }

    pub fn guest(&self) -> vmattest_agent::Guest<'_> {
        match self {
            LoadedGuest::Spec(spec) => vmattest_agent::Guest::Spec(spec),
            LoadedGuest::Domain { name, uri } => vmattest_agent::Guest::Domain {
                name,
                uri: uri.as_deref(),
            },
        }
    }
}

pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// A client for the server, with the token of `--token-file` (none for public endpoints).
pub fn connect(conn: &ServerArgs) -> anyhow::Result<vmattest_client::Client> {
    if conn.server.is_none() {
        anyhow::bail!("--server URL is required");
    }
    Ok(vmattest_client::Client::connect(
        &vmattest_client::Connect {
            server: conn.server.as_deref(),
            token_file: conn.token_file.as_deref(),
            ca_cert: conn.ca_cert.as_deref(),
        },
    )?)
}

/// A client for an interactive user: flags and environment, completed from the user's client
/// config. `token`: whether the call needs the token; public endpoints never read it.
pub fn connect_user(conn: ServerArgs, token: bool) -> anyhow::Result<vmattest_client::Client> {
    let mut conn = crate::userconf::complete(conn)?;
    if conn.server.is_none() {
        anyhow::bail!(
            "no server: expected --server URL, VMATTEST_SERVER or `server` in the client config"
        );
    }
    if !token {
        conn.token_file = None;
    }
    connect(&conn)
}

/// One roff page per command, named as git names its own (`vmattest-snapshot-take.1`).
fn manpages(dir: &std::path::Path, json: bool) -> anyhow::Result<()> {
    fn walk(
        cmd: &clap::Command,
        name: &str,
        dir: &std::path::Path,
        out: &mut Vec<String>,
    ) -> anyhow::Result<()> {
        let cmd = cmd.clone().name(name.to_owned());
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd.clone()).render(&mut page)?;
        let file = format!("{name}.1");
        vmattest_host::files::write_atomic(&dir.join(&file), &page, "man page")?;
        out.push(file);
        for sub in cmd
            .get_subcommands()
            .filter(|s| !s.is_hide_set() && s.get_name() != "help")
        {
            walk(sub, &format!("{name}-{}", sub.get_name()), dir, out)?;
        }
        Ok(())
    }
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    walk(&crate::args::command(), "vmattest", dir, &mut written)?;
    crate::output::show(json, &written, |w| {
        format!("{} man pages written to {}", w.len(), dir.display())
    })
}
