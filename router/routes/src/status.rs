//! What `sitelink-router status` shows: per-tunnel probe state and RTT, and the route each
//! remote prefix uses. [`run_routed`](crate::run_routed) keeps one up to date (in memory and,
//! if asked, in a TOML file that another process reads with [`Status::read`]).

use std::fmt;
use std::path::Path;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::probe::ProbeState;
use crate::RoutesError;

/// Where a router in site mode keeps its status file.
pub const DEVICE_PATH: &str = "/run/sitelink/routed.toml";

/// The route installer's status.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub site: String,
    /// Seconds since the Unix epoch when this was written.
    pub updated_unix: u64,
    /// The last apply's summary ("0 changes (...)").
    pub last_apply: String,
    #[serde(default)]
    pub tunnels: Vec<TunnelStatus>,
    #[serde(default)]
    pub prefixes: Vec<PrefixStatus>,
}

/// One tunnel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TunnelStatus {
    pub interface: String,
    pub state: ProbeState,
    /// Routes over it are installed (probe not down, handshake not stale).
    pub routable: bool,
    /// Last round-trip time in microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_us: Option<u64>,
    /// Why it is in this state.
    pub reason: String,
}

/// One remote prefix and the route it currently uses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrefixStatus {
    pub prefix: IpNet,
    /// Interface of the active (lowest-metric installed) route; `None` if none is installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<u32>,
    /// "direct", "transit" or "none".
    pub path: String,
}

impl Status {
    /// The status as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot serialize status: {e}\n"))
    }

    /// Write the status file atomically (temp file + rename).
    pub fn write(&self, path: &Path) -> Result<(), RoutesError> {
        let err = |errno| RoutesError::Status {
            path: path.display().to_string(),
            errno,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, self.to_toml()).map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)
    }

    /// Read a status file written by [`Status::write`].
    pub fn read(path: &Path) -> Result<Status, RoutesError> {
        let err = |errno| RoutesError::Status {
            path: path.display().to_string(),
            errno,
        };
        let text = std::fs::read_to_string(path).map_err(err)?;
        Status::parse(&text).map_err(|e| err(std::io::Error::other(e)))
    }

    /// A status from its TOML text (as [`Status::to_toml`] wrote it).
    pub fn parse(text: &str) -> Result<Status, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// A tunnel by interface name.
    pub fn tunnel(&self, ifname: &str) -> Option<&TunnelStatus> {
        self.tunnels.iter().find(|t| t.interface == ifname)
    }

    /// A prefix's status.
    pub fn prefix(&self, prefix: &IpNet) -> Option<&PrefixStatus> {
        self.prefixes.iter().find(|p| p.prefix == *prefix)
    }
}

impl fmt::Display for Status {
    /// Two tables: tunnels, then prefixes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "site {}: {}", self.site, self.last_apply)?;
        writeln!(f, "{:<16} {:<6} {:>10}  reason", "tunnel", "state", "rtt")?;
        for t in &self.tunnels {
            let rtt = t
                .rtt_us
                .map(|u| format!("{:.3} ms", u as f64 / 1e3))
                .unwrap_or_else(|| "-".into());
            writeln!(
                f,
                "{:<16} {:<6} {:>10}  {}",
                t.interface,
                t.state.to_string(),
                rtt,
                t.reason
            )?;
        }
        writeln!(f, "{:<20} {:<16} {:>6}  path", "prefix", "via", "metric")?;
        for p in &self.prefixes {
            writeln!(
                f,
                "{:<20} {:<16} {:>6}  {}",
                p.prefix.to_string(),
                p.via.as_deref().unwrap_or("-"),
                p.metric
                    .map(|m| m.to_string())
                    .unwrap_or_else(|| "-".into()),
                p.path
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_roundtrip_and_table() {
        let s = Status {
            site: "aws".into(),
            updated_unix: 1,
            last_apply: "0 changes".into(),
            tunnels: vec![TunnelStatus {
                interface: "wg-gcp".into(),
                state: ProbeState::Up,
                routable: true,
                rtt_us: Some(2500),
                reason: "first probe answered".into(),
            }],
            prefixes: vec![PrefixStatus {
                prefix: "10.2.0.0/24".parse().expect("net"),
                via: Some("wg-gcp".into()),
                metric: Some(100),
                path: "direct".into(),
            }],
        };
        let back: Status = toml::from_str(&s.to_toml()).expect("parse");
        assert_eq!(back, s);
        let path = std::env::temp_dir().join(format!("slr-status-{}.toml", std::process::id()));
        s.write(&path).expect("write");
        assert_eq!(Status::read(&path).expect("read"), s);
        let _ = std::fs::remove_file(&path);
        let text = s.to_string();
        assert!(
            text.contains("wg-gcp           up       2.500 ms"),
            "{text}"
        );
        assert!(text.contains("10.2.0.0/24"), "{text}");
    }
}
