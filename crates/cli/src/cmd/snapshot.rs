//! `vmattest snapshot ...`: chains of signed, incremental snapshots.

use std::path::Path;
use std::time::Instant;

use anyhow::Context as _;
use vmattest_core::chain::{ComponentKind, SeqNo};
use vmattest_host::verdict::Verdict;
use vmattest_host::{chain, domain, eventlog, files, keys, revoke, tpm, vm};
use vmattest_qemu::Mode;
use vmattest_sign::Signer;
use vmattest_store::{Store, TakeOptions, TakeSummary};

use super::{tree_params, verifier};
use crate::args::{ComponentArgs, SnapshotCommand};
use crate::output::{self, outln, verified_json};
use crate::progress::Bar;
use vmattest_host::report::{
    CaptureJson, ChainProofJson, ExportJson, ImportJson, LinkJson, PruneJson, RollbackJson,
    TakeJson,
};

pub fn run(cmd: SnapshotCommand, json: bool) -> anyhow::Result<()> {
    match cmd {
        SnapshotCommand::Init {
            store,
            vm_id,
            tree,
            policy,
            secret,
            no_head_cache,
            anchor_every,
        } => {
            let params = tree_params(&tree)?;
            let layout = chain::Layout {
                head_cache: !no_head_cache,
                anchor_every,
            };
            let meta = chain::init(
                &store.store,
                vm_id,
                &params,
                policy,
                secret.as_deref(),
                layout,
            )?;
            output::show(json, &meta, |m| {
                format!(
                    "initialised store {} for VM {} ({})",
                    store.store.display(),
                    m.vm_id,
                    m.alg
                )
            })
        }
        SnapshotCommand::Take {
            store,
            components,
            vm,
            domain,
            connect,
            keys: key_files,
            signer,
            bind_pcr,
            dirty,
            secret,
            live,
            anchor,
            rotate_keys,
            revokers,
        } => {
            let signers = keys::signers(&key_files, signer.is_some())?;
            let refs: Vec<&dyn Signer> = signers.iter().map(AsRef::as_ref).collect();
            let rotate = rotate_keys
                .iter()
                .map(|p| keys::read_secret(p))
                .collect::<Result<Vec<_>, _>>()?;
            let rotate: Vec<&dyn Signer> = rotate.iter().map(|k| k as &dyn Signer).collect();
            let revokers = revokers
                .iter()
                .map(|p| keys::read_public(p))
                .collect::<Result<Vec<_>, _>>()?;
            let secret = secret.as_deref().map(tpm::load_secret).transpose()?;
            let opts = TakeOptions {
                signers: &refs,
                time: vmattest_host::now(),
                secret: secret.as_ref(),
                anchor,
                rotate_to: &rotate,
                revokers: &revokers,
            };
            let (s, hypervisor) = match (vm, domain) {
                (Some(vm), _) => {
                    let mode = if live { Mode::Live } else { Mode::Paused };
                    take_vm(&store.store, &vm, &opts, mode, json)?
                }
                (None, Some(name)) => {
                    let r = domain::take(&store.store, &name, connect.as_deref(), &opts)?;
                    output::report(json, &CaptureJson::new(&name, &r))?;
                    (r.summary, None)
                }
                (None, None) => (
                    take_files(&store.store, &components, &dirty, &opts, json)?,
                    None,
                ),
            };
            // The TPM serves one session at a time: the signer's ends first.
            drop(refs);
            drop(signers);
            let Some(pcr) = bind_pcr else { return Ok(()) };
            let hypervisor = hypervisor.as_deref().and_then(eventlog::which);
            let out = eventlog::bind_link(
                &store.store,
                s.seq,
                &s.link,
                &s.components,
                hypervisor.as_deref(),
                pcr,
            )?;
            let j =
                serde_json::json!({"seq": s.seq.0, "quote": out.display().to_string(), "pcr": pcr});
            output::show(json, &j, |_| {
                format!(
                    "  quote of PCRs 0-7 and {pcr} over the link -> {}",
                    out.display()
                )
            })
        }
        SnapshotCommand::Log { store } => log(&store.store, json),
        SnapshotCommand::Revoke {
            store,
            verify,
            revoke: revoked,
            from,
            keys: key_files,
            signer,
            successors,
            reason,
            out,
        } => {
            let v = verifier(&verify)?;
            let revoked = keys::read_public(&revoked)?;
            let successors = successors
                .iter()
                .map(|p| keys::read_public(p))
                .collect::<Result<Vec<_>, _>>()?;
            let signers = keys::signers(&key_files, signer.is_some())?;
            let refs: Vec<&dyn Signer> = signers.iter().map(AsRef::as_ref).collect();
            let spec = revoke::RevokeSpec {
                key: revoked.key_id(),
                from: SeqNo(from),
                successors: &successors,
                reason,
                signers: &refs,
                time: vmattest_host::now(),
            };
            let (name, signed) = revoke::revoke(&store.store, v.pinned(), &spec)?;
            if let Some(out) = &out {
                let bytes = signed.encode()?;
                files::write_atomic(out, &bytes, "key revocation")?;
            }
            let j = revoke::RevocationJson::new(&name, signed.value(), out.as_deref());
            output::show(json, &j, |j| j.to_string())
        }
        SnapshotCommand::Verify {
            store,
            verify,
            upto,
            max_age,
        } => {
            let v = verifier(&verify)?;
            let (s, bar) = open_reporting(&store.store, "verifying", json)?;
            let r =
                s.verify(&v.options(upto.map(SeqNo), max_age.map(|m| (vmattest_host::now(), m))));
            bar.finish();
            let r = r?;
            output::show(json, &verified_json(&r, None), |_| {
                format!(
                    "OK: links {} to {} verify; state root {} at {}",
                    r.base, r.seq, r.state_root, r.time
                )
            })
        }
        SnapshotCommand::Restore {
            store,
            verify,
            seq,
            vm: None,
            domain: Some(name),
            connect,
            ..
        } => {
            let v = verifier(&verify)?;
            let bar = Bar::later("verifying", json);
            let r = domain::rollback(
                &name,
                connect.as_deref(),
                &store.store,
                &v,
                seq.map(SeqNo),
                Some(Box::new(bar.clone())),
            );
            bar.finish();
            output::report(json, &RollbackJson::new(&name, &r?))
        }
        SnapshotCommand::Restore {
            store,
            verify,
            seq,
            vm: Some(vm),
            ..
        } => {
            let spec = vm::load_spec(&vm)?;
            let v = verifier(&verify)?;
            let bar = Bar::later("verifying", json);
            let r = vm::rollback(
                &spec,
                &store.store,
                &v,
                seq.map(SeqNo),
                Some(Box::new(bar.clone())),
            );
            bar.finish();
            output::report(json, &RollbackJson::new(spec.name(), &r?))
        }
        SnapshotCommand::Restore {
            store,
            verify,
            seq,
            out,
            vm: None,
            domain: None,
            ..
        } => {
            let out = out.context("--out or --vm is required")?;
            let v = verifier(&verify)?;
            let (s, bar) = open_reporting(&store.store, "restoring", json)?;
            let t = Instant::now();
            let r = s.restore(&v.options(seq.map(SeqNo), None), &out);
            bar.finish();
            let r = r?;
            if json {
                return output::print(&verified_json(&r, Some(&out)));
            }
            for c in &r.components {
                outln!("{}  {}  {}", c.root, c.name, out.join(&c.name).display());
            }
            outln!(
                "restored seq {} (verified links 0 to {}) in {:.2} s",
                r.seq,
                r.seq,
                t.elapsed().as_secs_f64()
            );
            Ok(())
        }
        SnapshotCommand::Export {
            store,
            from,
            to,
            out,
        } => {
            let (s, bar) = open_reporting(&store.store, "exporting", json)?;
            let r = s.export(SeqNo(from), to.map(SeqNo), &out);
            bar.finish();
            let (links, objects) = r?;
            let j = ExportJson {
                out: out.display().to_string(),
                links,
                objects,
                bytes: std::fs::metadata(&out).map_or(0, |m| m.len()),
            };
            output::report(json, &j)
        }
        SnapshotCommand::Import {
            store,
            verify,
            bundle,
        } => {
            let v = verifier(&verify)?;
            let bar = Bar::later("verifying bundle", json);
            let r = Store::import_reporting(
                &store.store,
                &bundle,
                &v.options(None, None),
                Box::new(bar.clone()),
            );
            bar.finish();
            output::report(json, &ImportJson::from(&r?))
        }
        SnapshotCommand::Prune {
            store,
            verify,
            keep,
            keep_within,
            keys: key_files,
            signer,
        } => {
            let within = keep_within
                .as_deref()
                .map(|t| chain::parse_duration("--keep-within", t))
                .transpose()?;
            let v = verifier(&verify)?;
            let signers = keys::signers(&key_files, signer.is_some())?;
            let refs: Vec<&dyn Signer> = signers.iter().map(AsRef::as_ref).collect();
            let bar = Bar::later("verifying", json);
            let t = Instant::now();
            let r = chain::prune(
                &store.store,
                chain::Retention { keep, within },
                &v,
                &refs,
                vmattest_host::now(),
                Box::new(bar.clone()),
            );
            bar.finish();
            let r = r?;
            let j = PruneJson {
                summary: r,
                seconds: t.elapsed().as_secs_f64(),
            };
            output::report(json, &j)
        }
        SnapshotCommand::Fsck { store, repair } => {
            let rep = if repair {
                Store::open_writer(&store.store)?.repair()?
            } else {
                Store::open(&store.store)?.fsck()?
            };
            output::report(json, &rep)?;
            if !rep.is_clean() {
                return Err(Verdict::StoreDamaged {
                    store: store.store.clone(),
                    errors: rep.errors.clone(),
                }
                .into());
            }
            Ok(())
        }
        SnapshotCommand::Prove {
            store,
            verify,
            seq,
            component,
            page,
            count,
            out,
        } => {
            let v = verifier(&verify)?;
            let (at, proof) =
                chain::prove(&store.store, &v, seq.map(SeqNo), &component, page, count)?;
            files::write_atomic(&out, &proof.encode(), "page proof")?;
            let j = ChainProofJson {
                seq: at.seq.0,
                component,
                page,
                count,
                root: proof.root.to_hex(),
                state_root: at.state_root.to_hex(),
                out: out.display().to_string(),
            };
            output::report(json, &j)
        }
    }
}

/// Opens a store whose long work reports to a progress bar labelled `label`.
fn open_reporting(root: &Path, label: &str, json: bool) -> anyhow::Result<(Store, Bar)> {
    let mut s = Store::open(root)?;
    let bar = Bar::later(label, json);
    s.set_progress(Box::new(bar.clone()));
    Ok((s, bar))
}

fn take_files(
    root: &Path,
    comps: &ComponentArgs,
    dirty: &[String],
    opts: &TakeOptions<'_>,
    json: bool,
) -> anyhow::Result<TakeSummary> {
    let by_kind = [
        (ComponentKind::Memory, &comps.memory[..]),
        (ComponentKind::Disk, &comps.disk[..]),
        (ComponentKind::DeviceState, &comps.device_state[..]),
        (ComponentKind::Config, &comps.config[..]),
    ];
    let bar = Bar::later("hashing", json);
    let t = Instant::now();
    let s = chain::take_files(root, &by_kind, dirty, opts, Box::new(bar.clone()));
    bar.finish();
    let s = s?;
    let j = TakeJson {
        summary: (&s).into(),
        batches: s.batches,
        seconds: t.elapsed().as_secs_f64(),
    };
    output::report(json, &j)?;
    Ok(s)
}

/// `snapshot take --vm`: pause, measure, resume, then store and sign. Returns the summary and
/// the QEMU program (for `--bind-pcr` to measure).
fn take_vm(
    root: &Path,
    spec: &str,
    opts: &TakeOptions<'_>,
    mode: Mode,
    json: bool,
) -> anyhow::Result<(TakeSummary, Option<String>)> {
    let spec = vm::load_spec(spec)?;
    let r = vm::take(root, &spec, opts, mode)?;
    output::report(json, &CaptureJson::new(spec.name(), &r))?;
    Ok((r.summary, Some(spec.qemu().to_owned())))
}

fn log(root: &Path, json: bool) -> anyhow::Result<()> {
    let store = Store::open(root)?;
    let links = store.log()?;
    let head = store.head()?;
    let mut out: Vec<LinkJson> = Vec::with_capacity(links.len());
    for l in &links {
        let mut j = LinkJson::from(l);
        if let Some(h) = &head {
            j.anchor = store.manifest_at(h, l.value().seq)?.anchor;
        }
        out.push(j);
    }
    output::report_all(json, &out)
}
