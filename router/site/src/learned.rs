//! Endpoints learned from peers that have none in the config (sites behind NAT dial us; we learn
//! where from). They are remembered in a file next to the config, so a restarted router can dial
//! such a peer at once instead of waiting until the peer's own session times out (about 15 s of
//! a dead tunnel). A stale entry costs only handshake attempts: the peer's next handshake
//! corrects the endpoint, as roaming does.
//!
//! File format, one line per interface: `IFNAME ADDRESS:PORT`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The file, next to the site config (`/run/sitelink-config/` in the image: survives service
/// restarts, not reboots).
pub fn path(config_dir: &Path) -> PathBuf {
    config_dir.join("endpoints.learned")
}

/// Interface name -> endpoint. A missing or unreadable file is empty; malformed lines are skipped.
pub fn load(file: &Path) -> BTreeMap<String, String> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (ifname, endpoint) = l.split_once(' ')?;
            endpoint
                .parse::<std::net::SocketAddr>()
                .ok()
                .map(|_| (ifname.to_owned(), endpoint.to_owned()))
        })
        .collect()
}

/// Write the map atomically (temp file + rename).
pub fn save(file: &Path, endpoints: &BTreeMap<String, String>) -> std::io::Result<()> {
    let text: String = endpoints
        .iter()
        .map(|(i, e)| format!("{i} {e}\n"))
        .collect();
    let tmp = file.with_extension("learned.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bad_lines_skipped() {
        let dir = std::env::temp_dir().join(format!("sitelink-learned-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = path(&dir);
        let mut m = BTreeMap::new();
        m.insert("wg-office".to_owned(), "198.51.100.253:51820".to_owned());
        m.insert("wg-v6".to_owned(), "[2001:db8::1]:51820".to_owned());
        save(&file, &m).unwrap();
        std::fs::write(
            &file,
            std::fs::read_to_string(&file).unwrap() + "garbage\nwg-x not-an-endpoint\n",
        )
        .unwrap();
        assert_eq!(load(&file), m);
        assert!(load(&dir.join("missing")).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
