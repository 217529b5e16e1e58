//! `sitelink import-wg`: existing wg-quick / wg config files into the router model, one
//! interface per file. Everything is parsed and checked before anything is written; what the
//! router model cannot carry (DNS, hooks, SaveConfig, default routes) is named in a warning.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use serde::Serialize;
use sitelink_config::keys::{write_secret, PublicKey};
use sitelink_config::network::IFNAME_MAX;
use sitelink_config::site::{Interface, Peer, Route, RouteKind};
use sitelink_config::wgquick::{self, Table, WgQuick};

use crate::{CliError, Result};

/// What `import-wg` prints: site-config sections.
#[derive(Debug, Serialize)]
struct Imported {
    interfaces: Vec<Interface>,
    routes: Vec<Route>,
}

/// A secret to write once every file has been read.
struct Secret {
    file: String,
    base64: String,
}

/// `sitelink import-wg FILE.conf... [--keys-out DIR]`
pub fn import_wg(files: &[PathBuf], keys_out: Option<&Path>) -> Result<()> {
    let mut parsed = Vec::new();
    let mut errors = 0;
    for path in files {
        let text =
            fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        match wgquick::parse(&text) {
            Ok(q) => parsed.push((path, q)),
            Err(diags) => {
                for d in &diags {
                    eprintln!("{}:{}: {}", path.display(), d.line, d.message);
                }
                errors += diags.len();
            }
        }
    }
    if errors > 0 {
        let what = if files.len() == 1 {
            files[0].display().to_string()
        } else {
            format!("{} files", files.len())
        };
        return Err(CliError::Invalid { what, errors });
    }

    let mut out = Imported {
        interfaces: Vec::new(),
        routes: Vec::new(),
    };
    let mut secrets = Vec::new();
    for (path, q) in &parsed {
        for w in &q.warnings {
            eprintln!("{}:{}: warning: {}", path.display(), w.line, w.message);
        }
        convert(path, q, keys_out.is_some(), &mut out, &mut secrets)?;
    }
    let names: Vec<&str> = out.interfaces.iter().map(|i| i.name.as_str()).collect();
    if let Some((i, n)) = names
        .iter()
        .enumerate()
        .find(|(i, n)| names[..*i].contains(n))
    {
        return Err(anyhow!(
            "{}: interface name {n:?} is also the name of an earlier file; rename one file",
            files[i].display()
        )
        .into());
    }

    if let Some(dir) = keys_out {
        check_keys_out(dir, &secrets)?;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        for s in &secrets {
            let path = dir.join(&s.file);
            if !path.exists() {
                write_secret(&path, &s.base64)?;
            }
        }
    }
    out!(
        "# Imported by `sitelink import-wg` from {}.\n{}",
        files
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        toml::to_string(&out)?
    );
    Ok(())
}

/// Before anything is written: the directory must be private like a keystore, and an existing
/// key file must hold the same key (it is never overwritten).
fn check_keys_out(dir: &Path, secrets: &[Secret]) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = fs::metadata(dir) {
        let mode = meta.permissions().mode() & 0o777;
        if !meta.is_dir() || mode & 0o077 != 0 {
            return Err(anyhow!(
                "--keys-out {}: must be a directory of mode 0700 (it is {}mode {mode:04o}): chmod 700 {}",
                dir.display(),
                if meta.is_dir() { "" } else { "not a directory, " },
                dir.display()
            )
            .into());
        }
    }
    for s in secrets {
        let path = dir.join(&s.file);
        if let Ok(existing) = fs::read_to_string(&path) {
            if existing.trim() != s.base64 {
                return Err(anyhow!(
                    "{} already holds another key; not overwritten (move it away or pick another --keys-out)",
                    path.display()
                )
                .into());
            }
        }
    }
    Ok(())
}

fn convert(
    path: &Path,
    q: &WgQuick,
    export_keys: bool,
    out: &mut Imported,
    secrets: &mut Vec<Secret>,
) -> Result<()> {
    let file = path.display();
    let name = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_owned();
    if name.is_empty() || name.len() > IFNAME_MAX || name.contains([' ', '/']) {
        return Err(anyhow!("{file}: the interface is named after the file, and {name:?} is not an interface name (1 to {IFNAME_MAX} characters); rename the file").into());
    }
    let iface = &q.interface;
    let warn = |line: usize, what: String| eprintln!("{file}:{line}: warning: {what}");
    if !iface.dns.is_empty() {
        warn(
            iface.line,
            "DNS is not imported: the router does not manage resolvers".into(),
        );
    }
    for (key, cmds) in [
        ("PreUp", &iface.pre_up),
        ("PostUp", &iface.post_up),
        ("PreDown", &iface.pre_down),
        ("PostDown", &iface.post_down),
    ] {
        if !cmds.is_empty() {
            warn(
                iface.line,
                format!("{key} hooks are not imported: the router runs no shell commands"),
            );
        }
    }
    if iface.save_config {
        warn(
            iface.line,
            "SaveConfig is not imported: the router's config is rendered, never saved back".into(),
        );
    }
    let mtu = match iface.mtu {
        None => 1420,
        Some(m) => u16::try_from(m)
            .ok()
            .filter(|m| (576..=9000).contains(m))
            .ok_or_else(|| anyhow!("{file}:{}: MTU {m} is outside 576 to 9000", iface.line))?,
    };
    // A key is exported to --keys-out (written once every file is valid) or named as left out.
    let mut export = |key: Option<&wgquick::Key>, file: String, line: usize, what: &str| match key {
        Some(k) if export_keys => {
            secrets.push(Secret {
                file: file.clone(),
                base64: k.to_base64(),
            });
            Some(file)
        }
        Some(_) => {
            warn(
                line,
                format!("the {what} is not exported; pass --keys-out DIR to write it (mode 0600)"),
            );
            None
        }
        None => None,
    };
    let private_key_file = export(
        iface.private_key.as_ref(),
        format!("{name}.key"),
        iface.line,
        "private key",
    );
    if iface.private_key.is_none() {
        warn(
            iface.line,
            "no PrivateKey: the interface will use the site key".into(),
        );
    }
    let mut peers = Vec::new();
    for (i, p) in q.peers.iter().enumerate() {
        let preshared_key_file = export(
            p.preshared_key.as_ref(),
            format!("{name}.peer{i}.psk"),
            p.line,
            "preshared key",
        );
        peers.push(Peer {
            site: None,
            public_key: PublicKey::from(&p.public_key),
            endpoint: p.endpoint.clone(),
            persistent_keepalive: p.keepalive().unwrap_or(0),
            allowed_ips: p.allowed_ips.clone(),
            preshared_key_file,
        });
        // wg-quick routes each peer's allowed IPs through the interface unless Table = off.
        let table_off = iface.table == Some(Table::Off);
        for prefix in p.allowed_ips.iter().filter(|_| !table_off) {
            if prefix.prefix_len() == 0 {
                warn(p.line, format!("no route imported for {prefix}: a default route through a tunnel needs a policy the router does not set up; add the route you want explicitly"));
                continue;
            }
            out.routes.push(Route {
                prefix: *prefix,
                site: name.clone(),
                via: name.clone(),
                metric: 100,
                kind: RouteKind::Direct,
            });
        }
    }
    if let Some(Table::Id(t)) = iface.table {
        warn(iface.line, format!("Table = {t}: routes are imported without a table; the router puts them in its route_table"));
    }
    out.interfaces.push(Interface {
        name,
        listen_port: iface.listen_port.unwrap_or(0),
        mtu,
        addresses: iface.addresses.clone(),
        peer_address: None,
        private_key_file,
        fwmark: iface.fwmark.unwrap_or(0),
        peers,
    });
    Ok(())
}
