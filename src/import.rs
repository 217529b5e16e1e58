//! `sitelink import-wg`: wg-quick files into the router model.
use std::path::{Path, PathBuf};

pub fn import_wg(_files: &[PathBuf], _keys_out: Option<&Path>) -> crate::Result<()> {
    Err(anyhow::anyhow!("import-wg: in progress").into())
}
