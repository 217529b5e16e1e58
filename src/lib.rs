//! The `sitelink` host CLI's commands. `main.rs` parses arguments and calls these.

use std::fmt;
use std::fs;
use std::path::Path;

/// `println!` that ignores a closed stdout (`sitelink lab up | head -1` must not panic with the
/// lab half built: the work goes on, only the output is lost).
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `print!` that ignores a closed stdout.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($arg)*);
    }};
}

use sitelink_config::diag::Diagnostic;
use sitelink_config::keys::{KeyAction, Keystore, PublicKey};
use sitelink_config::network::{self, Network};
use sitelink_config::site;

pub mod bench;
pub mod build;
mod import;
pub mod lab;
pub use import::import_wg;

/// A command failure and the exit code it maps to.
#[derive(Debug)]
pub enum CliError {
    /// The input was refused; every problem was printed as a diagnostic. Exit code 2.
    Invalid { what: String, errors: usize },
    /// A wrong argument (an unknown site, ...). Exit code 2.
    Usage(anyhow::Error),
    /// Anything else. Exit code 1.
    Failed(anyhow::Error),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Invalid { .. } | CliError::Usage(_) => 2,
            CliError::Failed(_) => 1,
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Invalid { what, errors } => {
                let s = if *errors == 1 { "" } else { "s" };
                write!(f, "{what}: {errors} error{s}, nothing done")
            }
            CliError::Failed(e) | CliError::Usage(e) => write!(f, "{e:#}"),
        }
    }
}

impl<E: Into<anyhow::Error>> From<E> for CliError {
    /// Errors that name an argument the user got wrong exit 2; the rest exit 1.
    fn from(e: E) -> Self {
        let e = e.into();
        let usage = matches!(
            e.downcast_ref(),
            Some(site::RenderError::UnknownSite { .. })
        ) || matches!(
            e.downcast_ref(),
            Some(sitelink_lab::netns::LabError::UnknownSite { .. })
        ) || matches!(e.downcast_ref(), Some(sitelink_image::ImageError::Usage(_)));
        if usage {
            CliError::Usage(e)
        } else {
            CliError::Failed(e)
        }
    }
}

pub type Result<T> = std::result::Result<T, CliError>;

/// Read a text input. Bytes that are not UTF-8 are an input error with their place.
fn read(path: &Path) -> Result<String> {
    let bytes = fs::read(path)
        .map_err(|e| CliError::Failed(anyhow::anyhow!("cannot read {}: {e}", path.display())))?;
    String::from_utf8(bytes).map_err(|e| {
        let good = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = good.iter().filter(|&&b| b == b'\n').count() + 1;
        let col = good.iter().rev().take_while(|&&b| b != b'\n').count() + 1;
        let bad = e.as_bytes().get(good.len()).copied().unwrap_or(0);
        eprintln!(
            "{}:{line}:{col}: not UTF-8 text (byte 0x{bad:02x}); save the file as UTF-8",
            path.display()
        );
        CliError::Invalid {
            what: path.display().to_string(),
            errors: 1,
        }
    })
}

fn print_diagnostics(diags: &[Diagnostic]) {
    for d in diags {
        eprintln!("{d}");
    }
}

/// Read and validate a network file, printing every diagnostic.
pub fn load_network(path: &Path) -> Result<Network> {
    let text = read(path)?;
    let parsed = network::parse(&text, &path.display().to_string());
    print_diagnostics(&parsed.diagnostics);
    match parsed.network {
        Some(net) => Ok(net),
        None => Err(CliError::Invalid {
            what: path.display().to_string(),
            errors: parsed.errors().count(),
        }),
    }
}

/// `sitelink validate NETWORK.toml`
pub fn validate(path: &Path) -> Result<()> {
    let net = load_network(path)?;
    out!("{}", summary(&net));
    Ok(())
}

/// The one-screen summary `validate` prints.
pub fn summary(net: &Network) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let slots = 1u64 << (31 - net.tunnel_pool.prefix_len());
    let _ = writeln!(
        out,
        "network {}: {} sites, {} tunnels, tunnel pool {} ({} of {slots} /31s used), mtu {}, table {}",
        net.name,
        net.sites.len(),
        net.links.len(),
        net.tunnel_pool,
        net.links.len(),
        net.mtu,
        net.route_table
    );
    let _ = writeln!(
        out,
        "probe: every {} ms, down after {} misses, up after {} answers",
        net.probe.interval_ms, net.probe.down_after, net.probe.up_after
    );
    let _ = writeln!(
        out,
        "\n{:<13} {:<28} {:<8} prefixes",
        "site", "endpoint", "tunnels"
    );
    for (i, s) in net.sites.iter().enumerate() {
        let endpoint = match &s.endpoint {
            Some(e) => e.to_string(),
            None => "(behind NAT)".into(),
        };
        let prefixes: Vec<String> = s.lan.prefixes.iter().map(ToString::to_string).collect();
        let _ = writeln!(
            out,
            "{:<13} {:<28} {:<8} {}",
            s.name,
            endpoint,
            net.peers_of(i).len(),
            prefixes.join(", ")
        );
    }
    let _ = writeln!(out, "\n{:<27} tunnel addresses", "tunnel");
    for l in &net.links {
        let (a, b) = (&net.sites[l.a], &net.sites[l.b]);
        let _ = writeln!(
            out,
            "{:<27} {}={} {}={}",
            format!("{}-{}", a.name, b.name),
            a.name,
            l.addr_a,
            b.name,
            l.addr_b
        );
    }
    out
}

/// Public keys for rendering: from a keystore if given, else from the network file.
fn key_source<'a>(
    net: &'a Network,
    keys: Option<&'a Path>,
) -> impl FnMut(&str) -> std::result::Result<PublicKey, String> + 'a {
    let store = keys.map(Keystore::new);
    move |site: &str| {
        if let Some(store) = &store {
            return store.public(site).map_err(|e| e.to_string());
        }
        net.sites
            .iter()
            .find(|s| s.name == site)
            .and_then(|s| s.public_key)
            .ok_or_else(|| "the network file has no `public_key` for it; pass --keys DIR (see `sitelink keys init`)".to_owned())
    }
}

/// `sitelink render NETWORK.toml --site NAME [--keys DIR]`
pub fn render(path: &Path, site_name: &str, keys: Option<&Path>) -> Result<()> {
    let net = load_network(path)?;
    let cfg = site::render(&net, site_name, key_source(&net, keys))?;
    out!("{}", cfg.to_toml());
    Ok(())
}

/// `sitelink keys init NETWORK.toml --out DIR [--rotate SITE]`
pub fn keys_init(path: &Path, out: &Path, rotate: Option<&str>) -> Result<()> {
    let net = load_network(path)?;
    if let Some(r) = rotate {
        if net.position(r).is_none() {
            let known: Vec<&str> = net.sites.iter().map(|s| s.name.as_str()).collect();
            return Err(CliError::Usage(anyhow::anyhow!(
                "--rotate {r:?}: no such site; sites are {}",
                known.join(", ")
            )));
        }
    }
    let names: Vec<&str> = net.sites.iter().map(|s| s.name.as_str()).collect();
    let store = Keystore::new(out);
    for (site, action) in store.init(&names, rotate)? {
        let verb = match action {
            KeyAction::Kept => "kept",
            KeyAction::Created => "created",
            KeyAction::Rotated => "rotated",
        };
        outln!(
            "{verb:<8} {}  public key {}",
            store.key_path(&site).display(),
            store.public(&site)?
        );
    }
    Ok(())
}

/// `sitelink bench routes [--routes N]`
pub fn bench_routes(routes: usize) -> Result<()> {
    let report = sitelink_routes::bench(routes)?;
    out!("{report}");
    Ok(())
}

/// `sitelink build NETWORK.toml --out DIR ...`: validates first (diagnostics as `validate`
/// prints them), then runs the image pipeline.
pub fn build_image(
    network: &Path,
    out: &Path,
    profile: &str,
    format: &str,
    kernel_deb: Option<&Path>,
    keys: Option<&Path>,
) -> Result<()> {
    load_network(network)?;
    build::build(network, out, profile, format, kernel_deb, keys)?;
    Ok(())
}
