//! `vmattest snapshot ...`: chains of signed, incremental snapshots.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context as _, bail};
use serde::Serialize;
use vmattest_core::alg::PageIndex;
use vmattest_core::chain::{ComponentKind, ComponentRoot, SeqNo};
use vmattest_core::class::{Classify as _, ErrorClass};
use vmattest_core::tree::ImageTree;
use vmattest_sign::{Signer, keyfile};
use vmattest_store::{
    ComponentInput, PinnedKeys, ReplayOptions, Store, StoreError, StoreMeta, StoreSecret,
    TakeOptions, TakeSummary, Verified,
};

use super::{now, tree_params, write_atomic};
use crate::VerificationFailed;
use crate::args::{ComponentArgs, SnapshotCommand, VerifyArgs};
use crate::output;
use crate::progress::Bar;

/// Store errors that mean "the data does not match its signed commitments" exit 1.
pub(super) fn err(e: StoreError) -> anyhow::Error {
    if e.class() == ErrorClass::Verification {
        VerificationFailed(e.to_string()).into()
    } else {
        anyhow::Error::new(e)
    }
}

#[derive(Debug, Serialize)]
struct ComponentJson {
    name: String,
    kind: &'static str,
    bytes: u64,
    root: String,
}

fn components_json(c: &[ComponentRoot]) -> Vec<ComponentJson> {
    c.iter()
        .map(|c| ComponentJson {
            name: c.name.clone(),
            kind: c.kind.name(),
            bytes: c.len,
            root: c.root.to_hex(),
        })
        .collect()
}

#[derive(Debug, Serialize)]
pub(super) struct VerifiedJson {
    ok: bool,
    seq: u64,
    link: String,
    state_root: String,
    time: String,
    components: Vec<ComponentJson>,
    out: Option<String>,
}

pub(super) fn verified_json(v: &Verified, out: Option<&Path>) -> VerifiedJson {
    VerifiedJson {
        ok: true,
        seq: v.seq.0,
        link: v.link.to_hex(),
        state_root: v.state_root.to_hex(),
        time: v.time.to_string(),
        components: components_json(&v.components),
        out: out.map(|p| p.display().to_string()),
    }
}

pub fn run(cmd: SnapshotCommand, json: bool) -> anyhow::Result<()> {
    match cmd {
        SnapshotCommand::Init {
            store,
            vm_id,
            tree,
            policy,
            encrypt_with,
        } => {
            let params = tree_params(&tree)?;
            if let Some(path) = &encrypt_with {
                if path.exists() {
                    super::tpm::load_secret(path)?;
                } else {
                    StoreSecret::generate(path).map_err(err)?;
                }
            }
            let meta = StoreMeta {
                format: vmattest_store::STORE_FORMAT,
                vm_id,
                alg: params.alg().name().into(),
                salt: hex::encode(params.salt()),
                policy_id: policy,
                encrypted: encrypt_with.is_some(),
            };
            Store::init(&store.store, meta.clone()).map_err(err)?;
            if json {
                output::print(&meta)
            } else {
                println!(
                    "initialised store {} for VM {} ({})",
                    store.store.display(),
                    meta.vm_id,
                    meta.alg
                );
                Ok(())
            }
        }
        SnapshotCommand::Take {
            store,
            vm: Some(vm),
            keys,
            signer,
            secret,
            bind_pcr,
            ..
        } => {
            let signers = super::keys::load_signers(&keys, signer.is_some())?;
            let (s, hypervisor) =
                super::vm::take(&store.store, &vm, &signers, secret.as_deref(), json)?;
            // The TPM serves one session at a time: the signer's ends first.
            drop(signers);
            bind_take(&store.store, &s, Some(&hypervisor), bind_pcr, json)
        }
        SnapshotCommand::Take {
            store,
            components,
            keys,
            signer,
            dirty,
            secret,
            bind_pcr,
            vm: None,
        } => {
            let signers = super::keys::load_signers(&keys, signer.is_some())?;
            let s = take(
                &store.store,
                &components,
                &signers,
                &dirty,
                secret.as_deref(),
                json,
            )?;
            drop(signers);
            bind_take(&store.store, &s, None, bind_pcr, json)
        }
        SnapshotCommand::Log { store } => log(&store.store, json),
        SnapshotCommand::Verify {
            store,
            verify,
            upto,
            max_age,
        } => {
            let (keys, secret) = load_verify(&verify)?;
            let (s, bar) = open_reporting(&store.store, "verifying", json)?;
            let opts = ReplayOptions {
                upto: upto.map(SeqNo),
                keys: &keys,
                secret: secret.as_ref(),
                max_age: max_age.map(|m| (now(), m)),
            };
            let v = s.verify(&opts);
            bar.finish();
            let v = v.map_err(err)?;
            if json {
                output::print(&verified_json(&v, None))
            } else {
                println!(
                    "OK: links 0..={} verify; state root {} at {}",
                    v.seq, v.state_root, v.time
                );
                Ok(())
            }
        }
        SnapshotCommand::Restore {
            store,
            verify,
            seq,
            vm: Some(vm),
            ..
        } => super::vm::restore(&store.store, &verify, seq, &vm, json),
        SnapshotCommand::Restore {
            store,
            verify,
            seq,
            out,
            vm: None,
        } => {
            let out = out.context("--out or --vm is required")?;
            let (keys, secret) = load_verify(&verify)?;
            let (s, bar) = open_reporting(&store.store, "restoring", json)?;
            let opts = ReplayOptions {
                upto: seq.map(SeqNo),
                keys: &keys,
                secret: secret.as_ref(),
                max_age: None,
            };
            let t = Instant::now();
            let v = s.restore(&opts, &out);
            bar.finish();
            let v = v.map_err(err)?;
            if json {
                output::print(&verified_json(&v, Some(&out)))
            } else {
                for c in &v.components {
                    println!("{}  {}  {}", c.root, c.name, out.join(&c.name).display());
                }
                println!(
                    "restored seq {} (verified links 0..={}) in {:.2} s",
                    v.seq,
                    v.seq,
                    t.elapsed().as_secs_f64()
                );
                Ok(())
            }
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
            let (links, objects) = r.map_err(err)?;
            let bytes = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
            if json {
                output::print(
                    &serde_json::json!({"out": out.display().to_string(), "links": links, "objects": objects, "bytes": bytes}),
                )
            } else {
                println!(
                    "exported {links} link(s), {objects} object(s), {bytes} bytes to {}",
                    out.display()
                );
                Ok(())
            }
        }
        SnapshotCommand::Import {
            store,
            verify,
            bundle,
        } => {
            let (keys, secret) = load_verify(&verify)?;
            let opts = ReplayOptions {
                upto: None,
                keys: &keys,
                secret: secret.as_ref(),
                max_age: None,
            };
            let bar = Bar::later("verifying bundle", json);
            let r = Store::import_reporting(&store.store, &bundle, &opts, Box::new(bar.clone()));
            bar.finish();
            let r = r.map_err(err)?;
            if json {
                output::print(&serde_json::json!({
                    "first": r.first.0, "last": r.last.0, "new_links": r.new_links, "objects": r.objects,
                    "head": r.verified.seq.0, "link": r.verified.link.to_hex(),
                }))
            } else {
                println!(
                    "imported links {}..={} ({} new); head is seq {}",
                    r.first, r.last, r.new_links, r.verified.seq
                );
                Ok(())
            }
        }
        SnapshotCommand::Fsck { store, repair } => {
            let rep = if repair {
                Store::open_writer(&store.store).and_then(|s| s.repair())
            } else {
                Store::open(&store.store).and_then(|s| s.fsck())
            }
            .map_err(err)?;
            if json {
                output::print(&rep)?;
            } else {
                println!(
                    "head {:?}, {} link(s), {} object(s), {} leftover file(s){}, head cache {}",
                    rep.head,
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
                    println!("error: {e}");
                }
            }
            if !rep.is_clean() {
                return Err(VerificationFailed(format!(
                    "{}: {}",
                    store.store.display(),
                    rep.errors.join("; ")
                ))
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
            let (keys, secret) = load_verify(&verify)?;
            let s = Store::open(&store.store).map_err(err)?;
            let dir = tempdir_near(&store.store)?;
            let restored = dir.join("state");
            let opts = ReplayOptions {
                upto: seq.map(SeqNo),
                keys: &keys,
                secret: secret.as_ref(),
                max_age: None,
            };
            let result = (|| -> anyhow::Result<()> {
                let v = s.restore(&opts, &restored).map_err(err)?;
                let Some(c) = v.components.iter().find(|c| c.name == component) else {
                    bail!(
                        "--component {component:?}: not in the chain (it has {})",
                        v.components
                            .iter()
                            .map(|c| c.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                };
                let image = vmattest_image::MappedImage::open(&restored.join(&c.name))?;
                let tree =
                    ImageTree::build(s.params(), image.bytes(), &vmattest_core::tree::NoProgress)?;
                let proof = tree
                    .prove(image.bytes(), PageIndex(page), count)
                    .with_context(|| format!("component {component}"))?;
                write_atomic(&out, &proof.encode())?;
                if json {
                    output::print(
                        &serde_json::json!({"seq": v.seq.0, "component": component, "page": page, "count": count,
                        "root": proof.root.to_hex(), "state_root": v.state_root.to_hex(), "out": out.display().to_string()}),
                    )
                } else {
                    println!(
                        "proof of {component} pages {page}..{} at seq {} under root {} -> {}",
                        page + count,
                        v.seq,
                        proof.root,
                        out.display()
                    );
                    Ok(())
                }
            })();
            let _ = std::fs::remove_dir_all(&dir);
            result
        }
    }
}

/// Opens a store whose long work reports to a progress bar labelled `label`.
pub(super) fn open_reporting(root: &Path, label: &str, json: bool) -> anyhow::Result<(Store, Bar)> {
    let mut s = Store::open(root).map_err(err)?;
    let bar = Bar::later(label, json);
    s.set_progress(Box::new(bar.clone()));
    Ok((s, bar))
}

fn tempdir_near(store: &Path) -> anyhow::Result<PathBuf> {
    let mut rnd = [0u8; 8];
    getrandom::fill(&mut rnd).map_err(|e| anyhow::anyhow!("OS randomness: {e}"))?;
    let dir = store
        .join("tmp")
        .join(format!("prove-{}", hex::encode(rnd)));
    std::fs::create_dir_all(&dir).with_context(|| format!("{}", dir.display()))?;
    Ok(dir)
}

pub(super) fn load_verify(v: &VerifyArgs) -> anyhow::Result<(PinnedKeys, Option<StoreSecret>)> {
    let keys = v
        .pubkeys
        .iter()
        .map(|k| keyfile::read_public_key(k))
        .collect::<Result<Vec<_>, _>>()?;
    let keys = PinnedKeys::new(keys).map_err(err)?;
    let secret = v
        .secret
        .as_deref()
        .map(super::tpm::load_secret)
        .transpose()?;
    Ok((keys, secret))
}

/// `PATH` or `NAME=PATH`; unnamed ones are called after their kind, numbered from the second.
fn components(args: &ComponentArgs) -> anyhow::Result<Vec<ComponentInput>> {
    let mut out = Vec::new();
    for (kind, list) in [
        (ComponentKind::Memory, &args.memory),
        (ComponentKind::Disk, &args.disk),
        (ComponentKind::DeviceState, &args.device_state),
        (ComponentKind::Config, &args.config),
    ] {
        for (i, spec) in list.iter().enumerate() {
            let (name, path) = match spec.split_once('=') {
                Some((n, p)) => (n.to_owned(), PathBuf::from(p)),
                None if i == 0 => (kind.name().to_owned(), PathBuf::from(spec)),
                None => (format!("{}{i}", kind.name()), PathBuf::from(spec)),
            };
            out.push(ComponentInput {
                name,
                kind,
                path,
                dirty: None,
            });
        }
    }
    if out.is_empty() {
        bail!("expected at least one of --memory, --disk, --device-state, --config");
    }
    Ok(out)
}

/// Reads `NAME=FILE` dirty lists: page indices, one per line.
fn apply_dirty(inputs: &mut [ComponentInput], dirty: &[String]) -> anyhow::Result<()> {
    for spec in dirty {
        let Some((name, file)) = spec.split_once('=') else {
            bail!("--dirty {spec:?}: expected NAME=FILE");
        };
        let Some(input) = inputs.iter_mut().find(|c| c.name == name) else {
            bail!("--dirty {spec:?}: no component named {name:?}");
        };
        let text = super::read_capped(Path::new(file), 256 << 20, "dirty page list")?;
        let text = String::from_utf8_lossy(&text);
        let mut pages = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let p: u64 = line.parse().map_err(|_| {
                anyhow::anyhow!("{file}:{}: expected a page index, found {line:?}", n + 1)
            })?;
            pages.push(PageIndex(p));
        }
        input.dirty = Some(pages);
    }
    Ok(())
}

#[derive(Debug, Serialize)]
struct TakeJson {
    #[serde(flatten)]
    summary: SummaryJson,
    batches: usize,
    seconds: f64,
}

/// The fields every take reports, from files or from a VM.
#[derive(Debug, Serialize)]
pub(super) struct SummaryJson {
    seq: u64,
    link: String,
    state_root: String,
    changed_pages: u64,
    zero_pages: u64,
    total_pages: u64,
    stored_bytes: u64,
    components: Vec<ComponentJson>,
}

impl From<&TakeSummary> for SummaryJson {
    fn from(s: &TakeSummary) -> SummaryJson {
        SummaryJson {
            seq: s.seq.0,
            link: s.link.to_hex(),
            state_root: s.state_root.to_hex(),
            changed_pages: s.changed_pages,
            zero_pages: s.zero_pages,
            total_pages: s.total_pages,
            stored_bytes: s.stored_bytes,
            components: components_json(&s.components),
        }
    }
}

fn take(
    root: &Path,
    comps: &ComponentArgs,
    signers: &[Box<dyn Signer>],
    dirty: &[String],
    secret: Option<&Path>,
    json: bool,
) -> anyhow::Result<TakeSummary> {
    let mut inputs = components(comps)?;
    apply_dirty(&mut inputs, dirty)?;
    let signer_refs: Vec<&dyn Signer> = signers.iter().map(AsRef::as_ref).collect();
    let secret = secret.map(super::tpm::load_secret).transpose()?;
    let mut store = Store::open_writer(root).map_err(err)?;
    let total: u64 = inputs
        .iter()
        .filter_map(|c| std::fs::metadata(&c.path).ok())
        .map(|m| m.len())
        .sum();
    let bar = Bar::new(total, "hashing", json);
    store.set_progress(Box::new(bar.clone()));
    let t = Instant::now();
    let opts = TakeOptions {
        signers: &signer_refs,
        time: now(),
        secret: secret.as_ref(),
    };
    let s = store.take(&inputs, &opts).map_err(err)?;
    bar.finish();
    let seconds = t.elapsed().as_secs_f64();
    if json {
        output::print(&TakeJson {
            summary: (&s).into(),
            batches: s.batches,
            seconds,
        })?;
        return Ok(s);
    }
    println!(
        "seq {}: {} of {} pages changed ({} now zero), {} bytes stored in {} batch(es), {:.2} s",
        s.seq, s.changed_pages, s.total_pages, s.zero_pages, s.stored_bytes, s.batches, seconds
    );
    println!("  link {}\n  state root {}", s.link, s.state_root);
    Ok(s)
}

/// `--bind-pcr`: measure and quote over the new link (after the signer's TPM session ended).
fn bind_take(
    root: &Path,
    s: &TakeSummary,
    hypervisor: Option<&str>,
    pcr: Option<u32>,
    json: bool,
) -> anyhow::Result<()> {
    let Some(pcr) = pcr else { return Ok(()) };
    let hypervisor = hypervisor.and_then(super::bind::which);
    let out = super::bind::bind(
        root,
        s.seq,
        &s.link,
        &s.components,
        hypervisor.as_deref(),
        pcr,
    )?;
    if json {
        output::print(
            &serde_json::json!({"seq": s.seq.0, "quote": out.display().to_string(), "pcr": pcr}),
        )
    } else {
        println!(
            "  quote of PCRs 0-7 and {pcr} over the link -> {}",
            out.display()
        );
        Ok(())
    }
}

fn log(root: &Path, json: bool) -> anyhow::Result<()> {
    let s = Store::open(root).map_err(err)?;
    for l in s.log().map_err(err)? {
        let v = l.value();
        let digest = vmattest_core::chain::link_digest(&l);
        if json {
            output::print(&serde_json::json!({
                "seq": v.seq.0, "time": v.time.to_string(), "link": digest.to_hex(), "prev": v.prev.to_hex(),
                "delta": v.delta.to_hex(), "state_root": v.state_root.to_hex(), "manifest": v.manifest.to_hex(),
                "key_ids": v.key_ids.iter().map(|k| k.to_hex()).collect::<Vec<_>>(),
            }))?;
        } else {
            println!(
                "seq {:>4}  {}  link {}  state {}",
                v.seq, v.time, digest, v.state_root
            );
        }
    }
    Ok(())
}
