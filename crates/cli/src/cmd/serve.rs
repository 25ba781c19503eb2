//! `vmattest serve`: the attestation server, on embedded defaults (SQLite in the state dir).

use anyhow::Context as _;
use vmattest_server::options::ServeArgs;

use crate::output;

pub fn run(a: ServeArgs, json: bool) -> anyhow::Result<()> {
    a.init_logs()?;
    let ready_file = a.ready_file.clone();
    let config = a.config()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let mut ready_err = None;
    runtime.block_on(vmattest_server::serve(config, |addr| {
        if let Some(f) = &ready_file
            && let Err(e) =
                vmattest_host::files::write_atomic(f, format!("{addr}\n").as_bytes(), "ready file")
        {
            ready_err = Some(e);
        }
        if json {
            let _ = output::print(&serde_json::json!({ "listening": addr.to_string() }));
        } else {
            let _ = output::line(format_args!("listening on {addr}"));
        }
    }))?;
    if let Some(e) = ready_err {
        return Err(anyhow::Error::new(e).context("writing --ready-file"));
    }
    Ok(())
}
