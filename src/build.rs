//! `sitelink build NETWORK.toml --out DIR [--profile cloud|metal] [--format kernel-initrd]
//! [--kernel-deb PATH] [--keys DIR]`: the generic boot image (`DIR/vmlinuz`,
//! `DIR/initramfs.img`) and one config disk per site (`DIR/sites/<site>.cidata.img`). Progress
//! (each pipeline step, every external command) goes to stderr; the table of outputs with sizes
//! and sha256 to stdout. The work is `sitelink_image::build`.

use std::path::Path;

use anyhow::Context as _;

/// Run the image build and print its report.
pub fn build(
    network: &Path,
    out: &Path,
    profile: &str,
    format: &str,
    kernel_deb: Option<&Path>,
    keys: Option<&Path>,
) -> anyhow::Result<()> {
    let mut opts = sitelink_image::BuildOptions::new(network, out);
    opts.profile = profile.parse()?;
    opts.format = format.parse()?;
    opts.kernel_deb = kernel_deb.map(Path::to_owned);
    opts.keys = keys.map(Path::to_owned);
    let report = sitelink_image::build(&opts)
        .with_context(|| format!("sitelink build {}", network.display()))?;
    out!("{report}");
    Ok(())
}
