//! JSON shapes printed with `--json`; typed so the output is stable.

use serde::Serialize;
use vmattest_core::record::ImageMeasurement;

#[derive(Debug, Serialize)]
pub struct ImageJson {
    pub path: String,
    pub alg: &'static str,
    pub root: String,
    pub pages: u64,
    pub bytes: u64,
    pub salt: String,
}

impl From<&ImageMeasurement> for ImageJson {
    fn from(m: &ImageMeasurement) -> ImageJson {
        ImageJson {
            path: m.path.clone(),
            alg: m.params.alg().name(),
            root: m.root.to_hex(),
            pages: m.pages(),
            bytes: m.len,
            salt: hex::encode(m.params.salt()),
        }
    }
}

/// Prints one JSON value on its own line.
pub fn print<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}
