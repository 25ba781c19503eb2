use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde::Serialize;
use vmattest_core::alg::PageIndex;
use vmattest_core::tree::PageProof;
use vmattest_core::wire::{HEADER_LEN, Kind};
use vmattest_image::MappedImage;

use super::{parse_hex, read_capped, tree_params, write_atomic};
use crate::VerificationFailed;
use crate::args::TreeArgs;
use crate::output;
use crate::progress::Bar;

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

fn proof_json(path: &Path, p: &PageProof, ok: bool) -> ProofJson {
    ProofJson {
        ok,
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
    args: &TreeArgs,
    json: bool,
) -> anyhow::Result<()> {
    let params = tree_params(args)?;
    let mapped = MappedImage::open(image)?;
    let bar = Bar::new(
        mapped.bytes().len() as u64,
        &image.display().to_string(),
        json,
    );
    let tree = mapped.measure(&params, &bar)?;
    bar.finish();
    let proof = tree
        .prove(mapped.bytes(), PageIndex(page), count)
        .with_context(|| format!("{}: --page {page} --count {count}", image.display()))?;
    write_atomic(out, &proof.encode())?;
    if json {
        output::print(&proof_json(out, &proof, true))
    } else {
        println!(
            "proof of pages {page}..{} of {} under root {} -> {}",
            page + count,
            image.display(),
            proof.root,
            out.display()
        );
        Ok(())
    }
}

pub fn verify(
    path: &Path,
    root: Option<&str>,
    record: Option<&Path>,
    pubkeys: &[PathBuf],
    extract: Option<&Path>,
    json: bool,
) -> anyhow::Result<()> {
    let bytes = read_capped(path, Kind::PageProof.max_body() + HEADER_LEN, "page proof")?;
    let proof = PageProof::decode(&bytes).with_context(|| format!("{}", path.display()))?;
    let result = check(path, &proof, root, record, pubkeys);
    if json {
        output::print(&proof_json(path, &proof, result.is_ok()))?;
    }
    result?;
    if let Some(out) = extract {
        write_atomic(out, &proof.pages)?;
    }
    if !json {
        println!(
            "OK: pages {}..{} hash to {} root {}",
            proof.first,
            proof.first.0 + proof.count,
            proof.params.alg(),
            proof.root
        );
    }
    Ok(())
}

fn check(
    path: &Path,
    proof: &PageProof,
    root: Option<&str>,
    record: Option<&Path>,
    pubkeys: &[PathBuf],
) -> anyhow::Result<()> {
    let expected = match (root, record) {
        (Some(hex), _) => Some(parse_hex("--root", hex)?),
        (None, Some(rec)) => {
            let signed = super::record::load(rec)?;
            super::record::check_signatures(rec, &signed, pubkeys)?;
            let matching = signed.value().images.iter().find(|m| {
                m.root.as_bytes() == proof.root.as_bytes()
                    && m.params == proof.params
                    && m.len == proof.image_len
            });
            if matching.is_none() {
                return Err(VerificationFailed(format!(
                    "{}: root {} is not among the images of {}",
                    path.display(),
                    proof.root,
                    rec.display()
                ))
                .into());
            }
            None
        }
        (None, None) => bail!("verify-proof: expected --root HEX or --record FILE --pubkey KEY"),
    };
    if let Some(want) = expected
        && want != proof.root.as_bytes()
    {
        return Err(VerificationFailed(format!(
            "{}: proof is for root {}, expected {}",
            path.display(),
            proof.root,
            hex::encode(&want)
        ))
        .into());
    }
    proof
        .verify()
        .map_err(|e| VerificationFailed(format!("{}: {e}", path.display())).into())
}
