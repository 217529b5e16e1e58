//! Site mode: one process runs all of a site's WireGuard interfaces (one per peer) and the route
//! installer, from one site config (the output of `sitelink render`) and the key next to it.
//!
//! Start: parse the config, read the keys, create each interface ([`sitelink_wg::Device`]) and
//! configure it through its control socket, then run the route installer
//! ([`sitelink_routes::run_routed_with`]) fed with handshake ages from the interfaces, until
//! SIGTERM/SIGINT or until an interface dies. Stop: the route installer removes its routes, then
//! the interfaces go.
#![forbid(unsafe_code)]

pub mod learned;
pub mod uapi;

use std::fmt::Write as _;
use std::net::ToSocketAddrs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sitelink_config::diag::Diagnostic;
use sitelink_config::endpoint::Endpoint;
use sitelink_config::keys::{read_private, KeystoreError};
use sitelink_config::site::{Interface, SiteConfig};
use sitelink_routes::{run_routed_with, stop_on_signals, RoutedOptions, RoutesError, Status};
use sitelink_wg::{Device, StartDeviceError};

/// Where the route installer writes its status (read by `status`).
pub const STATUS_PATH: &str = sitelink_routes::status::DEVICE_PATH;
/// The site key, next to the config, unless an interface names its own.
pub const SITE_KEY: &str = "site.key";

/// Why site mode stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum SiteError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Diagnostic>),
    #[error("interface {ifname}: {source}")]
    Key {
        ifname: String,
        source: KeystoreError,
    },
    #[error(transparent)]
    Device(#[from] StartDeviceError),
    #[error(transparent)]
    Uapi(#[from] uapi::UapiError),
    #[error(transparent)]
    Routes(#[from] RoutesError),
    #[error("interface {ifname} stopped on its own ({reason}); stopping the site so the supervisor restarts it")]
    DeviceStopped { ifname: String, reason: String },
}

impl SiteError {
    /// Errors that a restart cannot fix (a config or key problem): the supervisor should not
    /// restart the service until the config changes.
    pub fn is_config_error(&self) -> bool {
        matches!(
            self,
            SiteError::Invalid(_) | SiteError::Key { .. } | SiteError::Read { .. }
        )
    }
}

/// Exit code for errors a restart cannot fix (bad config or key): "do not restart".
pub const EXIT_CONFIG: u8 = 3;

/// Log to stderr at `LOG_LEVEL` (error, warn, info (default), debug, trace), lines as
/// `level: message`.
pub fn init_logging() {
    sitelink_wg::cli::init_logging_with_prefix("");
}

/// Read and check a site config.
pub fn load(path: &Path) -> Result<SiteConfig, SiteError> {
    let text = std::fs::read_to_string(path).map_err(|source| SiteError::Read {
        path: path.to_owned(),
        source,
    })?;
    SiteConfig::parse(&text, &path.display().to_string()).map_err(SiteError::Invalid)
}

fn hex(bytes: &[u8; 32]) -> String {
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Resolve an endpoint to an address the data plane can use. DNS names resolve at start.
fn resolve(ifname: &str, e: &Endpoint) -> Option<String> {
    match e {
        Endpoint::Addr(a) => Some(a.to_string()),
        Endpoint::Name { host, port } => match (host.as_str(), *port)
            .to_socket_addrs()
            .map(|mut a| a.next())
        {
            Ok(Some(a)) => Some(a.to_string()),
            Ok(None) | Err(_) => {
                log::warn!("{ifname}: cannot resolve endpoint {e}; the peer can still dial us");
                None
            }
        },
    }
}

/// The `set=1` request that gives interface `iface` its key, port and peers. A peer without a
/// configured endpoint gets `learned`, the endpoint it last had (see [`learned`]).
fn set_request(
    dir: &Path,
    iface: &Interface,
    learned: Option<&String>,
) -> Result<String, SiteError> {
    let key_err = |source| SiteError::Key {
        ifname: iface.name.clone(),
        source,
    };
    let key_file = dir.join(iface.private_key_file.as_deref().unwrap_or(SITE_KEY));
    let key = read_private(&key_file).map_err(key_err)?;
    let mut req = String::from("set=1\n");
    let _ = writeln!(req, "private_key={}", hex(key.as_bytes()));
    let _ = writeln!(req, "listen_port={}", iface.listen_port);
    let _ = writeln!(req, "fwmark={}", iface.fwmark);
    req.push_str("replace_peers=true\n");
    for peer in &iface.peers {
        let _ = writeln!(req, "public_key={}", hex(&peer.public_key.0));
        if let Some(psk) = &peer.preshared_key_file {
            let _ = writeln!(
                req,
                "preshared_key={}",
                hex(read_private(&dir.join(psk)).map_err(key_err)?.as_bytes())
            );
        }
        if let Some(endpoint) = peer.endpoint.as_ref().and_then(|e| resolve(&iface.name, e)) {
            let _ = writeln!(req, "endpoint={endpoint}");
        } else if let Some(endpoint) = learned {
            log::info!(
                "{}: dialing the peer's last known endpoint {endpoint}",
                iface.name
            );
            let _ = writeln!(req, "endpoint={endpoint}");
        }
        let _ = writeln!(
            req,
            "persistent_keepalive_interval={}",
            peer.persistent_keepalive
        );
        req.push_str("replace_allowed_ips=true\n");
        for ip in &peer.allowed_ips {
            let _ = writeln!(req, "allowed_ip={ip}");
        }
    }
    req.push('\n');
    Ok(req)
}

/// Handshake ages read from the interfaces' control sockets.
fn handshake_age(ifname: &str) -> Option<Duration> {
    uapi::get(ifname).ok()?.handshake_age()
}

/// Run a site until SIGTERM/SIGINT (Ok) or a failure (Err).
pub fn run(config: &Path) -> Result<(), SiteError> {
    let cfg = load(config)?;
    let dir = config.parent().unwrap_or(Path::new(".")).to_owned();
    // Build every request first: a key problem must stop us before anything is created.
    let learned_file = learned::path(&dir);
    let known = learned::load(&learned_file);
    let requests: Vec<String> = cfg
        .interfaces
        .iter()
        .map(|i| set_request(&dir, i, known.get(&i.name)))
        .collect::<Result<_, _>>()?;
    let stop = stop_on_signals()?;
    let devices: Arc<Mutex<Vec<Device>>> = Arc::default();
    let started = start_devices(&cfg, &requests, &devices);
    let result = started.and_then(|()| {
        log::info!(
            "site {}: {} tunnel interfaces up",
            cfg.site,
            cfg.interfaces.len()
        );
        let unconfigured: Vec<String> = cfg
            .interfaces
            .iter()
            .filter(|i| i.peers.iter().all(|p| p.endpoint.is_none()))
            .map(|i| i.name.clone())
            .collect();
        let died = watch_devices(
            devices.clone(),
            stop.clone(),
            Learner {
                file: learned_file,
                interfaces: unconfigured,
                known,
            },
        );
        let opts = RoutedOptions {
            handshakes: Some(Box::new(handshake_age)),
            status_path: Some(PathBuf::from(STATUS_PATH)),
            ..RoutedOptions::default()
        };
        let routed = run_routed_with(cfg.clone(), opts, stop.clone());
        let died = died.lock().unwrap_or_else(|p| p.into_inner()).take();
        match (routed, died) {
            (Err(e), _) => Err(SiteError::Routes(e)),
            (Ok(()), Some((ifname, reason))) => Err(SiteError::DeviceStopped { ifname, reason }),
            (Ok(()), None) => Ok(()),
        }
    });
    let devices = std::mem::take(&mut *devices.lock().unwrap_or_else(|p| p.into_inner()));
    for d in devices {
        d.stop();
    }
    result
}

/// Start interface `name`. Right after a crash of the previous router the kernel may still be
/// tearing down its TUN of the same name (EBUSY); wait for that, up to 5 s, instead of failing.
fn start_device(name: &str) -> Result<Device, SiteError> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match Device::start(name) {
            Err(StartDeviceError::CreateTun { source, .. })
                if source.raw_os_error() == Some(16) && std::time::Instant::now() < deadline =>
            {
                log::debug!("{name}: TUN busy (previous owner exiting); retrying");
                std::thread::sleep(Duration::from_millis(100));
            }
            other => return Ok(other?),
        }
    }
}

fn start_devices(
    cfg: &SiteConfig,
    requests: &[String],
    devices: &Mutex<Vec<Device>>,
) -> Result<(), SiteError> {
    for (iface, request) in cfg.interfaces.iter().zip(requests) {
        let device = start_device(&iface.name)?;
        devices
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(device);
        uapi::exchange(&iface.name, request)?;
    }
    Ok(())
}

type Death = Arc<Mutex<Option<(String, String)>>>;

/// Keeps [`learned`] endpoints up to date for the interfaces whose peer has none configured.
struct Learner {
    file: PathBuf,
    interfaces: Vec<String>,
    known: std::collections::BTreeMap<String, String>,
}

impl Learner {
    fn update(&mut self) {
        let mut changed = false;
        for ifname in &self.interfaces {
            if let Some(e) = uapi::get(ifname).ok().and_then(|i| i.endpoint) {
                if self.known.get(ifname) != Some(&e) {
                    self.known.insert(ifname.clone(), e);
                    changed = true;
                }
            }
        }
        if changed {
            if let Err(e) = learned::save(&self.file, &self.known) {
                log::warn!(
                    "cannot remember peer endpoints in {}: {e}",
                    self.file.display()
                );
            }
        }
    }
}

/// Stop the site when an interface stops on its own (its TUN deleted, its socket removed); every
/// second, remember the endpoints of peers that dialed us.
fn watch_devices(
    devices: Arc<Mutex<Vec<Device>>>,
    stop: Arc<AtomicBool>,
    mut learner: Learner,
) -> Death {
    let died: Death = Arc::default();
    let out = died.clone();
    let spawned = std::thread::Builder::new()
        .name("site-watch".into())
        .spawn(move || {
            let mut ticks = 0u32;
            while !stop.load(Ordering::Relaxed) {
                if ticks % 4 == 0 && !learner.interfaces.is_empty() {
                    learner.update();
                }
                ticks = ticks.wrapping_add(1);
                let dead = devices
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .find_map(|d| d.stopped().map(|r| (d.name().to_owned(), format!("{r:?}"))));
                if let Some(dead) = dead {
                    log::error!("interface {} stopped on its own ({})", dead.0, dead.1);
                    *died.lock().unwrap_or_else(|p| p.into_inner()) = Some(dead);
                    stop.store(true, Ordering::Relaxed);
                    return;
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        });
    if let Err(e) = spawned {
        log::warn!("cannot watch interfaces: {e}");
    }
    out
}

/// Run only the route installer on a config whose interfaces someone else runs (e.g.
/// `sitelink-wg` daemons driven by `wg`).
pub fn run_routed_only(config: &Path) -> Result<(), SiteError> {
    let cfg = load(config)?;
    let stop = stop_on_signals()?;
    let opts = RoutedOptions {
        handshakes: Some(Box::new(handshake_age)),
        status_path: Some(PathBuf::from(STATUS_PATH)),
        ..RoutedOptions::default()
    };
    Ok(run_routed_with(cfg, opts, stop)?)
}

/// `sitelink-router status`: tunnels (handshake, probe state, RTT) and the active route of
/// every remote prefix.
pub fn status() -> Result<String, SiteError> {
    let status = Status::read(Path::new(STATUS_PATH))?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "site {}: last apply: {}",
        status.site, status.last_apply
    );
    let _ = writeln!(
        out,
        "\n{:<15} {:<24} {:<12} {:<6} {:<9} {:<8} reason",
        "interface", "endpoint", "handshake", "probe", "rtt", "routes"
    );
    for t in &status.tunnels {
        let info = uapi::get(&t.interface).ok();
        let endpoint = info
            .as_ref()
            .and_then(|i| i.endpoint.clone())
            .unwrap_or_else(|| "-".into());
        let handshake = match info.as_ref().and_then(uapi::PeerInfo::handshake_age) {
            Some(age) => format!("{}s ago", age.as_secs()),
            None if info.is_some() => "never".into(),
            None => "no socket".into(),
        };
        let rtt = t
            .rtt_us
            .map_or("-".into(), |us| format!("{:.2} ms", us as f64 / 1000.0));
        let routes = if t.routable { "in" } else { "out" };
        let _ = writeln!(
            out,
            "{:<15} {:<24} {:<12} {:<6} {:<9} {:<8} {}",
            t.interface,
            endpoint,
            handshake,
            format!("{:?}", t.state).to_lowercase(),
            rtt,
            routes,
            t.reason
        );
    }
    let _ = writeln!(out, "\n{:<20} {:<15} {:<7} path", "prefix", "via", "metric");
    for p in &status.prefixes {
        let via = p.via.clone().unwrap_or_else(|| "-".into());
        let metric = p.metric.map_or("-".into(), |m| m.to_string());
        let _ = writeln!(
            out,
            "{:<20} {:<15} {:<7} {}",
            p.prefix.to_string(),
            via,
            metric,
            p.path
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A scratch directory `tag` with a fresh site key, and the golden config of seed-mesh `site`.
    fn scratch(tag: &str, site: &str) -> (PathBuf, sitelink_config::keys::PrivateKey, SiteConfig) {
        let dir = std::env::temp_dir().join(format!("sitelink-site-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = sitelink_config::keys::PrivateKey::generate();
        sitelink_config::keys::write_secret(&dir.join(SITE_KEY), &key.to_base64()).unwrap();
        let golden = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("../../configs/golden/seed-mesh/{site}.toml"));
        let text = std::fs::read_to_string(golden).unwrap();
        let cfg = SiteConfig::parse(&text, &format!("{site}.toml")).unwrap();
        (dir, key, cfg)
    }

    #[test]
    fn learned_endpoint_only_where_the_config_has_none() {
        let (dir, _, cfg) = scratch("learned", "aws");
        let office = cfg
            .interfaces
            .iter()
            .find(|i| i.name == "wg-office")
            .unwrap();
        let gcp = cfg.interfaces.iter().find(|i| i.name == "wg-gcp").unwrap();
        let learned = "198.51.100.253:40000".to_owned();
        assert!(!set_request(&dir, office, None)
            .unwrap()
            .contains("endpoint="));
        assert!(set_request(&dir, office, Some(&learned))
            .unwrap()
            .contains("endpoint=198.51.100.253:40000\n"));
        let req = set_request(&dir, gcp, Some(&learned)).unwrap();
        assert!(req.contains("endpoint=198.51.100.2:"), "{req}");
        assert!(!req.contains("40000"), "{req}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn set_request_carries_keys_ports_and_peers_in_hex() {
        let (dir, key, cfg) = scratch("request", "office");
        let req = set_request(&dir, &cfg.interfaces[0], None).unwrap();
        assert!(req.starts_with("set=1\n") && req.ends_with("\n\n"));
        assert!(req.contains(&format!("private_key={}\n", hex(key.as_bytes()))));
        assert!(req.contains("listen_port=51820\n"));
        assert!(req.contains("endpoint=198.51.100.1:51823\n"));
        assert!(req.contains("persistent_keepalive_interval=25\n"));
        assert!(req.contains("allowed_ip=0.0.0.0/0\nallowed_ip=::/0\n"));
        assert!(!req.contains(&key.to_base64()), "keys travel as hex only");

        // A key readable by others is refused before anything starts.
        std::fs::set_permissions(dir.join(SITE_KEY), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        let err = set_request(&dir, &cfg.interfaces[0], None).unwrap_err();
        assert!(err.is_config_error());
        assert!(err.to_string().contains("chmod 600"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
