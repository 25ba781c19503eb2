//! `vmattest policy ...`: resolve region policies and print their ids.

use std::path::Path;

use anyhow::Context as _;
use serde::Serialize;
use vmattest_core::attest::policy::MAX_POLICY_BYTES;
use vmattest_core::attest::symbols::MAX_SYSTEM_MAP_BYTES;
use vmattest_core::attest::{Policy, PolicyFile, SystemMap};

use super::read_capped;
use crate::args::{PolicyArgs, PolicyCommand};
use crate::output;

#[derive(Debug, Serialize)]
struct PolicyJson {
    id: String,
    name: String,
    toml: String,
}

fn read_text(path: &Path, max: usize, what: &str) -> anyhow::Result<String> {
    let bytes = read_capped(path, max, what)?;
    String::from_utf8(bytes).map_err(|_| anyhow::anyhow!("{}: {what} is not UTF-8", path.display()))
}

/// Reads and resolves a policy file (with a System.map when given).
pub fn load(args: &PolicyArgs) -> anyhow::Result<Policy> {
    let text = read_text(&args.policy, MAX_POLICY_BYTES, "policy")?;
    let file = PolicyFile::parse(&text).with_context(|| args.policy.display().to_string())?;
    let map = match &args.system_map {
        Some(p) => {
            let text = read_text(p, MAX_SYSTEM_MAP_BYTES, "System.map")?;
            Some(SystemMap::parse(&text).with_context(|| p.display().to_string())?)
        }
        None => None,
    };
    file.resolve(map.as_ref())
        .with_context(|| args.policy.display().to_string())
}

/// Reads a resolved policy (ranges only).
pub fn load_resolved(path: &Path) -> anyhow::Result<Policy> {
    load(&PolicyArgs {
        policy: path.to_path_buf(),
        system_map: None,
    })
}

pub fn run(cmd: PolicyCommand, json: bool) -> anyhow::Result<()> {
    let (args, id_only) = match cmd {
        PolicyCommand::Resolve { policy } => (policy, false),
        PolicyCommand::Id { policy } => (policy, true),
    };
    let policy = load(&args)?;
    let id = policy.id().to_hex();
    if json {
        return output::print(&PolicyJson {
            id,
            name: policy.name.clone(),
            toml: policy.to_toml(),
        });
    }
    if id_only {
        println!("{id}");
    } else {
        print!("{}", policy.to_toml());
    }
    Ok(())
}
