//! Images and signed records: `measure`, `keygen`, `pubkey`, `sign`, `verify`, `prove`,
//! `verify-proof` and `show`.

use std::path::{Path, PathBuf};

use anyhow::bail;
use serde::Serialize;
use vmattest_core::record::MeasurementRecord;
use vmattest_core::sig::SigAlg;
use vmattest_core::tree::PageProof;
use vmattest_host::files;
use vmattest_host::keys;
use vmattest_host::record::{self, Expected, RecordChecks};
use vmattest_sign::{SecretKey, Signer as _, keyfile};

use super::tree_params;
use crate::output::{self, ImageJson, outln};
use crate::progress::Bar;

pub fn measure(
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

#[derive(Debug, Serialize)]
struct KeyJson {
    alg: &'static str,
    key_id: String,
    secret: Option<String>,
    public: Option<String>,
}

pub fn keygen(alg: &str, out: &Path, json: bool) -> anyhow::Result<()> {
    let Some(alg) = SigAlg::from_name(alg) else {
        bail!("--alg {alg:?}: unknown key algorithm, expected ed25519, p384, ml-dsa-65 or hybrid");
    };
    let pub_path = keys::public_path(out);
    files::ensure_absent(out, "a key")?;
    files::ensure_absent(&pub_path, "a key")?;
    let key = SecretKey::generate(alg)?;
    keyfile::write_secret_key(out, &key)?;
    keyfile::write_public_key(&pub_path, &key.public_key())?;
    let j = KeyJson {
        alg: alg.name(),
        key_id: key.key_id().to_hex(),
        secret: Some(out.display().to_string()),
        public: Some(pub_path.display().to_string()),
    };
    output::show(json, &j, |j| {
        format!(
            "{alg} key {}\n  private {} (mode 0600)\n  public  {}",
            j.key_id,
            out.display(),
            pub_path.display()
        )
    })
}

pub fn pubkey(key: &Path, out: Option<&Path>, json: bool) -> anyhow::Result<()> {
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

#[derive(Debug, Serialize)]
struct RecordJson {
    ok: bool,
    record: String,
    time: String,
    nonce: String,
    key_ids: Vec<String>,
    images: Vec<ImageJson>,
    images_checked: bool,
}

fn record_json(path: &Path, r: &MeasurementRecord, images_checked: bool) -> RecordJson {
    RecordJson {
        ok: true,
        record: path.display().to_string(),
        time: r.time.to_string(),
        nonce: hex::encode(&r.nonce),
        key_ids: r.key_ids.iter().map(|k| k.to_hex()).collect(),
        images: r.images.iter().map(ImageJson::from).collect(),
        images_checked,
    }
}

pub fn sign(
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
        return output::print(&record_json(out, signed.value(), false));
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

pub fn verify(
    path: &Path,
    pubkeys: &[PathBuf],
    check_images: bool,
    max_age: Option<u64>,
    nonce: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let signed = record::load(path)?;
    let keys = keys::pinned(pubkeys)?;
    let checks = RecordChecks {
        max_age: max_age.map(|m| (vmattest_host::now(), m)),
        nonce: nonce.map(record::nonce).transpose()?,
    };
    record::verify(path, &signed, &keys, &checks)?;
    if check_images {
        for m in &signed.value().images {
            let bar = Bar::new(m.len, &m.path, json);
            let r = record::check_image(m, &bar);
            bar.finish();
            r?;
        }
    }
    if json {
        return output::print(&record_json(path, signed.value(), check_images));
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

#[derive(Debug, Serialize)]
struct ProofJson {
    ok: bool,
    proof: String,
    alg: &'static str,
    root: String,
    first_page: u64,
    pages: u64,
    image_bytes: u64,
    siblings: usize,
}

fn proof_json(path: &Path, p: &PageProof) -> ProofJson {
    ProofJson {
        ok: true,
        proof: path.display().to_string(),
        alg: p.params.alg().name(),
        root: p.root.to_hex(),
        first_page: p.first.0,
        pages: p.count,
        image_bytes: p.image_len,
        siblings: p.siblings.len() / p.params.alg().digest_len(),
    }
}

pub fn prove(
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
    output::show(json, &proof_json(out, &proof), |p| {
        format!(
            "proof of pages {page} to {} of {} under root {} -> {}",
            page + count - 1,
            image.display(),
            p.root,
            out.display()
        )
    })
}

pub fn verify_proof(
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
    output::show(json, &proof_json(path, &proof), |p| {
        format!(
            "OK: pages {} to {} hash to {} root {}",
            p.first_page,
            p.first_page + p.pages - 1,
            p.alg,
            p.root
        )
    })
}

pub fn show(path: &Path, json: bool) -> anyhow::Result<()> {
    let out = record::describe(path)?;
    if json {
        return output::print(&out);
    }
    outln!("{}: {}", path.display(), out.kind);
    if let Some(t) = &out.time {
        outln!("  time  {t}");
    }
    for s in &out.signatures {
        outln!("  signature {s}");
    }
    for m in &out.images {
        outln!(
            "  image {}  {}  {} pages  {}",
            m.root,
            m.alg,
            m.pages,
            m.path
        );
    }
    if let (Some(r), Some(f), Some(n)) = (&out.root, out.first_page, out.pages) {
        outln!("  proof of pages {f} to {} under root {r}", f + n - 1);
    }
    Ok(())
}
