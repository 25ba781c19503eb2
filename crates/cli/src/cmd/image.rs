//! Images and signed records: `measure`, `keygen`, `pubkey`, `sign`, `verify`, `prove`,
//! `verify-proof` and `show`.

use std::path::{Path, PathBuf};

use anyhow::bail;
use vmattest_host::record::{self, Expected, RecordChecks};
use vmattest_host::report::{KeyJson, ProofJson, RecordJson};
use vmattest_host::{files, keys};
use vmattest_sign::{Signer as _, keyfile};

use super::tree_params;
use crate::args::ImageCommand;
use crate::output::{self, ImageJson, outln};
use crate::progress::Bar;

/// The image and record commands.
pub fn run(cmd: ImageCommand, json: bool) -> anyhow::Result<()> {
    match cmd {
        ImageCommand::Measure {
            images,
            tree,
            hash_device,
        } => measure(&images, &tree, hash_device.as_deref(), json),
        ImageCommand::Keygen { alg, out } => output::report(json, &keys::generate(&alg, &out)?),
        ImageCommand::Pubkey { key, out } => pubkey(&key, out.as_deref(), json),
        ImageCommand::Sign {
            images,
            keys,
            out,
            tree,
            nonce,
        } => sign(&images, &keys, &out, &tree, &nonce, json),
        ImageCommand::Verify {
            record,
            pubkeys,
            check_images,
            max_age,
            nonce,
        } => {
            let checks = RecordChecks {
                max_age: max_age.map(|m| (vmattest_host::now(), m)),
                nonce: nonce.as_deref().map(record::nonce).transpose()?,
            };
            verify(&record, &pubkeys, check_images, &checks, json)
        }
        ImageCommand::Prove {
            image,
            page,
            count,
            out,
            tree,
        } => prove(&image, page, count, &out, &tree, json),
        ImageCommand::VerifyProof {
            proof,
            root,
            record,
            pubkeys,
            extract,
        } => verify_proof(
            &proof,
            root.as_deref(),
            record.as_deref(),
            &pubkeys,
            extract.as_deref(),
            json,
        ),
        ImageCommand::Show { file } => {
            output::show(json, &record::describe(&file)?, |d| d.text(&file))
        }
    }
}

fn measure(
    images: &[PathBuf],
    args: &crate::args::TreeArgs,
    hash_device: Option<&Path>,
    json: bool,
) -> anyhow::Result<()> {
    let params = tree_params(args)?;
    if hash_device.is_some() && (images.len() != 1 || !params.alg().takes_salt()) {
        bail!("--hash-device: expected one image measured with --alg sha256 or sha384");
    }
    for path in images {
        let (tree, m) = measured(path, &params, json)?;
        if let Some(dev) = hash_device {
            files::write_atomic(dev, &record::hash_device(&tree)?, "hash device")?;
        }
        output::show(json, &ImageJson::from(&m), |j| {
            format!(
                "{}  {}  {} pages  {}",
                j.root,
                m.params.alg(),
                j.pages,
                j.path
            )
        })?;
    }
    Ok(())
}

/// Measures one image with a progress bar on a terminal.
fn measured(
    path: &Path,
    params: &vmattest_core::tree::TreeParams,
    json: bool,
) -> anyhow::Result<(
    vmattest_core::tree::ImageTree,
    vmattest_core::record::ImageMeasurement,
)> {
    let len = std::fs::metadata(path).map_or(0, |m| m.len());
    let bar = Bar::new(len, &path.display().to_string(), json);
    let r = record::measure_image(path, params, &bar);
    bar.finish();
    Ok(r?)
}

fn pubkey(key: &Path, out: Option<&Path>, json: bool) -> anyhow::Result<()> {
    let public = keys::read_secret(key)?.public_key();
    if let Some(out) = out {
        keyfile::write_public_key(out, &public)?;
    }
    if json {
        return output::print(&KeyJson {
            alg: public.alg().name(),
            key_id: public.key_id().to_hex(),
            secret: None,
            public: out.map(|p| p.display().to_string()),
        });
    }
    if out.is_none() {
        outln!("{}", public.to_pem().trim_end());
    }
    Ok(())
}

fn sign(
    images: &[PathBuf],
    key_files: &[PathBuf],
    out: &Path,
    args: &crate::args::TreeArgs,
    nonce: &str,
    json: bool,
) -> anyhow::Result<()> {
    let params = tree_params(args)?;
    let nonce = record::nonce(nonce)?;
    let signers = key_files
        .iter()
        .map(|k| keys::read_secret(k))
        .collect::<Result<Vec<_>, _>>()?;
    let mut measured_images = Vec::with_capacity(images.len());
    for path in images {
        measured_images.push(measured(path, &params, json)?.1);
    }
    let signed = record::sign(measured_images, &signers, nonce, vmattest_host::now())?;
    files::write_atomic(out, &signed.encode()?, "signed record")?;
    if json {
        return output::print(&RecordJson::new(out, signed.value(), false));
    }
    for m in &signed.value().images {
        outln!("{}  {}  {}", m.root, m.params.alg(), m.path);
    }
    outln!(
        "signed record {} by {} key(s)",
        out.display(),
        signers.len()
    );
    Ok(())
}

fn verify(
    path: &Path,
    pubkeys: &[PathBuf],
    check_images: bool,
    checks: &RecordChecks,
    json: bool,
) -> anyhow::Result<()> {
    let signed = record::load(path)?;
    let keys = keys::pinned(pubkeys)?;
    record::verify(path, &signed, &keys, checks)?;
    if check_images {
        for m in &signed.value().images {
            let bar = Bar::new(m.len, &m.path, json);
            let r = record::check_image(m, &bar);
            bar.finish();
            r?;
        }
    }
    if json {
        return output::print(&RecordJson::new(path, signed.value(), check_images));
    }
    outln!(
        "OK: {} signature(s) verify; {} image(s){}",
        signed.signatures.len(),
        signed.value().images.len(),
        if check_images {
            " match their recorded roots"
        } else {
            " recorded"
        }
    );
    Ok(())
}

fn prove(
    image: &Path,
    page: u64,
    count: u64,
    out: &Path,
    args: &crate::args::TreeArgs,
    json: bool,
) -> anyhow::Result<()> {
    let params = tree_params(args)?;
    let mapped = record::map(image)?;
    let bar = Bar::new(
        mapped.bytes().len() as u64,
        &image.display().to_string(),
        json,
    );
    let tree = mapped.measure(&params, &bar);
    bar.finish();
    let proof = record::prove(image, &mapped, &tree?, page, count)?;
    files::write_atomic(out, &proof.encode(), "page proof")?;
    output::show(json, &ProofJson::new(out, &proof), |p| {
        format!(
            "proof of pages {page} to {} of {} under root {} -> {}",
            p.last_page(),
            image.display(),
            p.root,
            out.display()
        )
    })
}

fn verify_proof(
    path: &Path,
    root: Option<&str>,
    record_path: Option<&Path>,
    pubkeys: &[PathBuf],
    extract: Option<&Path>,
    json: bool,
) -> anyhow::Result<()> {
    let proof = record::load_proof(path)?;
    let root_bytes;
    let pinned;
    let expected = match (root, record_path) {
        (Some(hex), _) => {
            root_bytes = record::parse_hex("--root", hex, 64)?;
            Expected::Root(&root_bytes)
        }
        (None, Some(rec)) => {
            pinned = keys::pinned(pubkeys)?;
            Expected::Record(rec, &pinned)
        }
        (None, None) => bail!("verify-proof: expected --root HEX or --record FILE --pubkey KEY"),
    };
    record::check_proof(path, &proof, expected)?;
    if let Some(out) = extract {
        files::write_private(out, &proof.pages, "proven pages")?;
    }
    output::show(json, &ProofJson::new(path, &proof), |p| {
        format!(
            "OK: pages {} to {} hash to {} root {}",
            p.first_page,
            p.last_page(),
            p.alg,
            p.root
        )
    })
}
