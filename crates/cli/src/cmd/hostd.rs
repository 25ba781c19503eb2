//! `vmattest hostd` and `vmattest host status`.

use std::path::Path;

use vmattest_hostd::status::{self, VmStatus};

use crate::args::HostCommand;
use crate::output;

pub fn run(config: &Path, log_format: &str, check: bool, json: bool) -> anyhow::Result<()> {
    if check {
        let c = vmattest_hostd::Config::load(config)?;
        let names: Vec<&str> = c.targets.iter().map(|t| t.name.as_str()).collect();
        let j = serde_json::json!({
            "config": config,
            "state_dir": c.state_dir,
            "server": c.server.url,
            "vms": names,
            "selectors": c.selectors.iter().map(|s| &s.pattern).collect::<Vec<_>>(),
        });
        return output::show(json, &j, |_| {
            format!(
                "{}: {} VM(s) and {} selector(s), server {}",
                config.display(),
                names.len(),
                c.selectors.len(),
                c.server.url
            )
        });
    }
    vmattest_server::options::init_logs(log_format)?;
    Ok(vmattest_hostd::run(config)?)
}

fn line(v: &VmStatus) -> String {
    let attested = v.last_attestation.as_ref().map_or_else(
        || "never attested".to_owned(),
        |a| {
            format!(
                "attested {} score {} ({}){}",
                a.time,
                a.score,
                a.status,
                if a.alert { " ALERT" } else { "" }
            )
        },
    );
    let snapshot = v.last_snapshot.as_ref().map_or_else(
        || "no snapshot".to_owned(),
        |s| {
            format!(
                "snapshot seq {} at {} ({} ms paused)",
                s.seq, s.time, s.downtime_ms
            )
        },
    );
    let pruned = v.last_prune.as_ref().map_or_else(String::new, |p| {
        format!("; pruned at {} to seqs from {}", p.time, p.base)
    });
    let error = v.last_error.as_ref().map_or_else(String::new, |e| {
        format!("; last error {} {}: {}", e.time, e.what, e.error)
    });
    format!(
        "{}  {}  {attested}; {snapshot}{pruned}{error}",
        v.name, v.guest
    )
}

pub fn host(cmd: HostCommand, json: bool) -> anyhow::Result<()> {
    let HostCommand::Status { config, state_dir } = cmd;
    let dir = match state_dir {
        Some(d) => d,
        None => vmattest_hostd::Config::load(&config)?.state_dir,
    };
    let file = status::read(&dir)?;
    if json {
        return output::print(&file);
    }
    let state = if file.stopped { "stopped" } else { "running" };
    output::line(format_args!(
        "hostd pid {} ({state}), status of {}",
        file.pid, file.updated
    ))?;
    for v in &file.vms {
        output::line(format_args!("{}", line(v)))?;
    }
    Ok(())
}
