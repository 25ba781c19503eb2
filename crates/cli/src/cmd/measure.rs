use std::path::{Path, PathBuf};

use anyhow::bail;
use vmattest_core::record::ImageMeasurement;
use vmattest_core::tree::{ImageTree, TreeParams};
use vmattest_image::MappedImage;

use super::{tree_params, write_atomic};
use crate::args::TreeArgs;
use crate::output::{self, ImageJson};
use crate::progress::Bar;

pub fn run(
    images: &[PathBuf],
    args: &TreeArgs,
    hash_device: Option<&Path>,
    json: bool,
) -> anyhow::Result<()> {
    let params = tree_params(args)?;
    if hash_device.is_some() && (images.len() != 1 || !params.alg().takes_salt()) {
        bail!("--hash-device: expected one image measured with --alg sha256 or sha384");
    }
    for path in images {
        let (tree, m) = measure_one(path, &params, json)?;
        if let Some(dev) = hash_device {
            let mut uuid = [0u8; 16];
            getrandom_uuid(&mut uuid)?;
            let bytes = tree.verity_hash_device(uuid).unwrap_or_default();
            write_atomic(dev, &bytes)?;
        }
        if json {
            output::print(&ImageJson::from(&m))?;
        } else {
            println!(
                "{}  {}  {} pages  {}",
                m.root,
                m.params.alg(),
                m.pages(),
                m.path
            );
        }
    }
    Ok(())
}

/// Maps and measures one image, with a progress bar on a terminal.
pub fn measure_one(
    path: &Path,
    params: &TreeParams,
    json: bool,
) -> anyhow::Result<(ImageTree, ImageMeasurement)> {
    let image = MappedImage::open(path)?;
    let bar = Bar::new(
        image.bytes().len() as u64,
        &path.display().to_string(),
        json,
    );
    let tree = image.measure(params, &bar)?;
    bar.finish();
    let m = ImageMeasurement {
        path: path.display().to_string(),
        params: params.clone(),
        len: tree.len(),
        root: tree.root(),
    };
    Ok((tree, m))
}

/// A random (version 4) UUID for the hash device superblock.
fn getrandom_uuid(out: &mut [u8; 16]) -> anyhow::Result<()> {
    getrandom::fill(out).map_err(|e| anyhow::anyhow!("reading OS randomness: {e}"))?;
    out[6] = (out[6] & 0x0f) | 0x40;
    out[8] = (out[8] & 0x3f) | 0x80;
    Ok(())
}
