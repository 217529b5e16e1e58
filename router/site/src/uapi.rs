//! A client of the WireGuard control socket (`/var/run/wireguard/IFNAME.sock`), the same
//! protocol `wg` speaks. Site mode configures its own interfaces through it, so the data plane has
//! one configuration path whether `wg` or sitelink drives it.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sitelink_wg::device::socket_path;

/// A control-socket exchange that failed.
#[derive(Debug, thiserror::Error)]
pub enum UapiError {
    #[error("{ifname}: control socket {path}: {source}")]
    Io {
        ifname: String,
        path: String,
        source: std::io::Error,
    },
    #[error("{ifname}: the data plane refused the configuration: {}", std::io::Error::from_raw_os_error(-errno))]
    Errno { ifname: String, errno: i32 },
    #[error("{ifname}: malformed control socket reply (no errno line)")]
    Malformed { ifname: String },
}

/// Send `request` (ending in an empty line) and return the reply's key=value lines.
pub fn exchange(ifname: &str, request: &str) -> Result<Vec<(String, String)>, UapiError> {
    let path = socket_path(ifname);
    let io = |source| UapiError::Io {
        ifname: ifname.to_owned(),
        path: path.display().to_string(),
        source,
    };
    let mut stream = UnixStream::connect(&path).map_err(io)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(io)?;
    stream.write_all(request.as_bytes()).map_err(io)?;
    let mut lines = Vec::new();
    for line in BufReader::new(stream).lines() {
        let line = line.map_err(io)?;
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once('=') {
            lines.push((k.to_owned(), v.to_owned()));
        }
    }
    match lines.iter().rev().find(|(k, _)| k == "errno") {
        Some((_, v)) if v == "0" => Ok(lines),
        Some((_, v)) => Err(UapiError::Errno {
            ifname: ifname.to_owned(),
            errno: v.parse().unwrap_or(-5),
        }),
        None => Err(UapiError::Malformed {
            ifname: ifname.to_owned(),
        }),
    }
}

/// What `get=1` says about an interface's (first) peer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerInfo {
    pub listen_port: u16,
    pub endpoint: Option<String>,
    /// Unix time of the last handshake; None if never.
    pub last_handshake: Option<SystemTime>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

impl PeerInfo {
    /// Time since the last handshake.
    pub fn handshake_age(&self) -> Option<Duration> {
        SystemTime::now().duration_since(self.last_handshake?).ok()
    }
}

/// `get=1` on `ifname`.
pub fn get(ifname: &str) -> Result<PeerInfo, UapiError> {
    let lines = exchange(ifname, "get=1\n\n")?;
    let mut info = PeerInfo::default();
    let mut sec = 0u64;
    for (k, v) in &lines {
        match k.as_str() {
            "listen_port" => info.listen_port = v.parse().unwrap_or(0),
            "endpoint" => info.endpoint = Some(v.clone()),
            "last_handshake_time_sec" => sec = v.parse().unwrap_or(0),
            "rx_bytes" => info.rx_bytes += v.parse::<u64>().unwrap_or(0),
            "tx_bytes" => info.tx_bytes += v.parse::<u64>().unwrap_or(0),
            _ => {}
        }
    }
    if sec > 0 {
        info.last_handshake = Some(UNIX_EPOCH + Duration::from_secs(sec));
    }
    Ok(info)
}
