//! `vmattest snapshot ...`: chains of signed, incremental snapshots.

use std::path::Path;
use std::time::Instant;

use anyhow::Context as _;
use vmattest_core::chain::{ComponentKind, SeqNo};
use vmattest_host::verdict::Verdict;
use vmattest_host::{chain, eventlog, files, keys, tpm, vm};
use vmattest_sign::Signer;
use vmattest_store::{Store, StoreMeta, StoreSecret, TakeOptions, TakeSummary};

use super::{tree_params, verifier};
use crate::args::{ComponentArgs, SnapshotCommand};
use crate::output::{self, ms, outln, verified_json};
use crate::progress::Bar;
use vmattest_host::report::{CaptureJson, TakeJson};

pub fn run(cmd: SnapshotCommand, json: bool) -> anyhow::Result<()> {
    match cmd {
        SnapshotCommand::Init {
            store,
            vm_id,
            tree,
            policy,
            secret,
        } => {
            let params = tree_params(&tree)?;
            if let Some(path) = &secret {
                if path.exists() {
                    tpm::load_secret(path)?;
                } else {
                    StoreSecret::generate(path)?;
                }
            }
            let meta = StoreMeta {
                format: vmattest_store::STORE_FORMAT,
                vm_id,
                alg: params.alg().name().into(),
                salt: hex::encode(params.salt()),
                policy_id: policy,
                encrypted: secret.is_some(),
            };
            Store::init(&store.store, meta.clone())?;
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
            keys: key_files,
            signer,
            bind_pcr,
            dirty,
            secret,
        } => {
            let signers = keys::signers(&key_files, signer.is_some())?;
            let refs: Vec<&dyn Signer> = signers.iter().map(AsRef::as_ref).collect();
            let secret = secret.as_deref().map(tpm::load_secret).transpose()?;
            let (s, hypervisor) = match vm {
                Some(vm) => take_vm(&store.store, &vm, &refs, secret.as_ref(), json)?,
                None => (
                    take_files(
                        &store.store,
                        &components,
                        &dirty,
                        &refs,
                        secret.as_ref(),
                        json,
                    )?,
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
                    "OK: links 0 to {} verify; state root {} at {}",
                    r.seq, r.state_root, r.time
                )
            })
        }
        SnapshotCommand::Restore {
            store,
            verify,
            seq,
            out,
            vm: Some(vm),
        } => {
            let _ = out;
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
            let r = r?;
            if json {
                let mut j = serde_json::to_value(verified_json(&r.verified, None))?;
                j["vm"] = spec.name().into();
                j["rebuild_ms"] = ms(r.rebuild).into();
                j["switch_ms"] = ms(r.switch).into();
                return output::print(&j);
            }
            outln!(
                "{} rolled back to seq {} (verified links 0 to {}; rebuild {:.0} ms, QEMU switch {:.0} ms); the guest runs on",
                spec.name(),
                r.verified.seq,
                r.verified.seq,
                ms(r.rebuild),
                ms(r.switch)
            );
            Ok(())
        }
        SnapshotCommand::Restore {
            store,
            verify,
            seq,
            out,
            vm: None,
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
            let bytes = std::fs::metadata(&out).map_or(0, |m| m.len());
            let j = serde_json::json!({"out": out.display().to_string(), "links": links, "objects": objects, "bytes": bytes});
            output::show(json, &j, |_| {
                format!(
                    "exported {links} link(s), {objects} object(s), {bytes} bytes to {}",
                    out.display()
                )
            })
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
            let r = r?;
            let j = serde_json::json!({
                "first": r.first.0, "last": r.last.0, "new_links": r.new_links, "objects": r.objects,
                "head": r.verified.seq.0, "link": r.verified.link.to_hex(),
            });
            output::show(json, &j, |_| {
                format!(
                    "imported links {} to {} ({} new); head is seq {}",
                    r.first, r.last, r.new_links, r.verified.seq
                )
            })
        }
        SnapshotCommand::Fsck { store, repair } => {
            let rep = if repair {
                Store::open_writer(&store.store)?.repair()?
            } else {
                Store::open(&store.store)?.fsck()?
            };
            if json {
                output::print(&rep)?;
            } else {
                outln!(
                    "head {}, {} link(s), {} object(s), {} leftover file(s){}, head cache {}",
                    rep.head
                        .map_or_else(|| "none".to_owned(), |h| format!("seq {h}")),
                    rep.links,
                    rep.objects,
                    rep.leftovers.len(),
                    if rep.repaired { " removed" } else { "" },
                    if rep.cache_current {
                        "current"
                    } else {
                        "stale (rebuilt by the next take)"
                    }
                );
                for e in &rep.errors {
                    outln!("error: {e}");
                }
            }
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
            let j = serde_json::json!({"seq": at.seq.0, "component": component, "page": page, "count": count,
                "root": proof.root.to_hex(), "state_root": at.state_root.to_hex(), "out": out.display().to_string()});
            output::show(json, &j, |_| {
                format!(
                    "proof of {component} pages {page} to {} at seq {} under root {} -> {}",
                    page + count - 1,
                    at.seq,
                    proof.root,
                    out.display()
                )
            })
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
    signers: &[&dyn Signer],
    secret: Option<&StoreSecret>,
    json: bool,
) -> anyhow::Result<TakeSummary> {
    let mut inputs = chain::components(&[
        (ComponentKind::Memory, &comps.memory),
        (ComponentKind::Disk, &comps.disk),
        (ComponentKind::DeviceState, &comps.device_state),
        (ComponentKind::Config, &comps.config),
    ])?;
    chain::apply_dirty(&mut inputs, dirty)?;
    let mut store = Store::open_writer(root)?;
    let total: u64 = inputs
        .iter()
        .filter_map(|c| std::fs::metadata(&c.path).ok())
        .map(|m| m.len())
        .sum();
    let bar = Bar::new(total, "hashing", json);
    store.set_progress(Box::new(bar.clone()));
    let t = Instant::now();
    let opts = TakeOptions {
        signers,
        time: vmattest_host::now(),
        secret,
    };
    let s = store.take(&inputs, &opts);
    bar.finish();
    let s = s?;
    let seconds = t.elapsed().as_secs_f64();
    if json {
        output::print(&TakeJson {
            summary: (&s).into(),
            batches: s.batches,
            seconds,
        })?;
        return Ok(s);
    }
    outln!(
        "seq {}: {} of {} pages changed ({} now zero), {} bytes stored in {} batch(es), {:.2} s",
        s.seq,
        s.changed_pages,
        s.total_pages,
        s.zero_pages,
        s.stored_bytes,
        s.batches,
        seconds
    );
    outln!("  link {}\n  state root {}", s.link, s.state_root);
    Ok(s)
}

/// `snapshot take --vm`: pause, measure, resume, then store and sign. Returns the summary and
/// the QEMU program (for `--bind-pcr` to measure).
fn take_vm(
    root: &Path,
    spec: &str,
    signers: &[&dyn Signer],
    secret: Option<&StoreSecret>,
    json: bool,
) -> anyhow::Result<(TakeSummary, Option<String>)> {
    let spec = vm::load_spec(spec)?;
    let r = vm::take(root, &spec, signers, secret, vmattest_host::now())?;
    let s = &r.summary;
    if json {
        output::print(&CaptureJson::new(spec.name(), &r))?;
    } else {
        outln!(
            "{} seq {}: downtime {:.1} ms (device state {:.1} ms, {} bytes; measure {:.1} ms); {} of {} pages changed, {} bytes stored; commit {:.1} ms",
            spec.name(),
            s.seq,
            ms(r.downtime),
            ms(r.device_state),
            r.device_state_bytes,
            ms(r.measure),
            s.changed_pages,
            s.total_pages,
            s.stored_bytes,
            ms(r.commit)
        );
        outln!("  link {}\n  state root {}", s.link, s.state_root);
    }
    Ok((r.summary, Some(spec.qemu().to_owned())))
}

fn log(root: &Path, json: bool) -> anyhow::Result<()> {
    let s = Store::open(root)?;
    for l in s.log()? {
        let v = l.value();
        let digest = vmattest_core::chain::link_digest(&l);
        if json {
            output::print(&serde_json::json!({
                "seq": v.seq.0, "time": v.time.to_string(), "link": digest.to_hex(), "prev": v.prev.to_hex(),
                "delta": v.delta.to_hex(), "state_root": v.state_root.to_hex(), "manifest": v.manifest.to_hex(),
                "key_ids": v.key_ids.iter().map(|k| k.to_hex()).collect::<Vec<_>>(),
            }))?;
        } else {
            outln!(
                "seq {:>4}  {}  link {}  state {}",
                v.seq,
                v.time,
                digest,
                v.state_root
            );
        }
    }
    Ok(())
}
