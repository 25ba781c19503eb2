//! `vmattest policy ...`: resolve region policies and print their ids.

use serde::Serialize;

use crate::args::PolicyCommand;
use crate::output::{self, outln};

#[derive(Debug, Serialize)]
struct PolicyJson {
    id: String,
    name: String,
    toml: String,
}

pub fn run(cmd: PolicyCommand, json: bool) -> anyhow::Result<()> {
    let (args, id_only) = match cmd {
        PolicyCommand::Resolve { policy } => (policy, false),
        PolicyCommand::Id { policy } => (policy, true),
    };
    let policy = vmattest_host::policy::load(&args.policy, args.system_map.as_deref())?;
    let id = policy.id().to_hex();
    if json {
        return output::print(&PolicyJson {
            id,
            name: policy.name.clone(),
            toml: policy.to_toml(),
        });
    }
    if id_only {
        outln!("{id}");
    } else {
        outln!("{}", policy.to_toml().trim_end());
    }
    Ok(())
}
