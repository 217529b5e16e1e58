//! Golden renders of the example networks, and properties of rendering.
//!
//! To accept a deliberate change of the output: `SITELINK_UPDATE_GOLDEN=1 cargo test -p sitelink-config --test render`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic with context

use std::fs;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use sitelink_config::keys::{Keystore, PrivateKey};
use sitelink_config::network::{parse, Network};
use sitelink_config::site::{render, SiteConfig};

fn configs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs")
}

fn load(path: &Path) -> Network {
    let text = fs::read_to_string(path).unwrap();
    let parsed = parse(&text, &path.display().to_string());
    assert!(parsed.diagnostics.is_empty(), "{:#?}", parsed.diagnostics);
    parsed.network.unwrap()
}

#[test]
fn example_networks_match_their_golden_renders() {
    let keys = Keystore::new(configs().join("golden/keys"));
    let update = std::env::var_os("SITELINK_UPDATE_GOLDEN").is_some();
    let mut checked = 0;
    for network in ["seed-mesh", "two-sites"] {
        let net = load(&configs().join(format!("{network}.toml")));
        for site in &net.sites {
            let cfg = render(&net, &site.name, |s| {
                keys.public(s).map_err(|e| e.to_string())
            })
            .unwrap();
            let text = cfg.to_toml();
            // What the router reads back is what was rendered.
            assert_eq!(SiteConfig::parse(&text, "rendered").unwrap(), cfg);
            let golden = configs().join(format!("golden/{network}/{}.toml", site.name));
            if update {
                fs::create_dir_all(golden.parent().unwrap()).unwrap();
                fs::write(&golden, &text).unwrap();
            }
            let want = fs::read_to_string(&golden).unwrap_or_else(|e| {
                panic!(
                    "{}: {e} (run with SITELINK_UPDATE_GOLDEN=1 to create it)",
                    golden.display()
                )
            });
            assert_eq!(
                text,
                want,
                "render of {network}/{} differs from {}",
                site.name,
                golden.display()
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 6);
}

#[test]
fn office_render_has_a_tunnel_to_each_cloud_and_dials_them() {
    let keys = Keystore::new(configs().join("golden/keys"));
    let net = load(&configs().join("seed-mesh.toml"));
    let cfg = render(&net, "office", |s| {
        keys.public(s).map_err(|e| e.to_string())
    })
    .unwrap();
    let names: Vec<&str> = cfg.interfaces.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["wg-aws", "wg-gcp", "wg-azure"]);
    for iface in &cfg.interfaces {
        let peer = &iface.peers[0];
        assert!(peer.endpoint.is_some(), "office dials {}", iface.name);
        assert_eq!(peer.persistent_keepalive, 25, "office is behind NAT");
        assert_eq!(iface.addresses[0].prefix_len(), 31);
    }
    // The clouds never dial the office, and keep no keepalive to it.
    let aws = render(&net, "aws", |s| keys.public(s).map_err(|e| e.to_string())).unwrap();
    let to_office = aws
        .interfaces
        .iter()
        .find(|i| i.name == "wg-office")
        .unwrap();
    assert!(to_office.peers[0].endpoint.is_none());
    assert_eq!(to_office.peers[0].persistent_keepalive, 0);
    // Both ends of every tunnel agree on ports and addresses.
    let office_aws = &cfg.interfaces[0];
    assert_eq!(
        office_aws.peers[0].endpoint.as_ref().unwrap().port(),
        to_office.listen_port
    );
    assert_eq!(
        to_office.peer_address,
        Some(match office_aws.addresses[0] {
            ipnet::IpNet::V4(n) => n.addr(),
            _ => unreachable!(),
        })
    );
    // Routes: direct first, then transits with higher metrics.
    let gcp: Vec<_> = cfg.routes.iter().filter(|r| r.site == "gcp").collect();
    assert_eq!(
        gcp.iter()
            .map(|r| (r.via.as_str(), r.metric))
            .collect::<Vec<_>>(),
        [("wg-gcp", 100), ("wg-aws", 200), ("wg-azure", 201)]
    );
}

#[test]
fn render_never_contains_a_private_key() {
    let dir = std::env::temp_dir().join(format!("sitelink-render-keys-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    let net = load(&configs().join("seed-mesh.toml"));
    let names: Vec<&str> = net.sites.iter().map(|s| s.name.as_str()).collect();
    let store = Keystore::new(&dir);
    store.init(&names, None).unwrap();
    for site in &names {
        let text = render(&net, site, |s| store.public(s).map_err(|e| e.to_string()))
            .unwrap()
            .to_toml();
        for other in &names {
            let secret = store.private(other).unwrap().to_base64();
            assert!(
                !text.contains(&secret),
                "render of {site} leaks the private key of {other}"
            );
        }
    }
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn unknown_site_and_missing_keys_are_clear_errors() {
    let net = load(&configs().join("seed-mesh.toml"));
    let err = render(&net, "oracle", |_| Err("x".into()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("aws, gcp, azure, office"), "{err}");
    let err = render(&net, "aws", |_| Err("no .pub".into()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no public key for site \"gcp\""), "{err}");
}

/// A network file with `n` sites; the site at `nat` (if any) is behind NAT.
fn network_text(names: &[String], nat: Option<usize>) -> String {
    let mut t = String::from("name = \"p\"\n");
    for (i, name) in names.iter().enumerate() {
        t.push_str(&format!("\n[[sites]]\nname = \"{name}\"\n"));
        if nat == Some(i) {
            t.push_str("behind_nat = true\n");
        } else {
            t.push_str(&format!("endpoint = \"198.51.100.{}:51820\"\n", i + 1));
        }
        t.push_str(&format!(
            "[sites.lan]\naddress = \"10.{}.{}.1/24\"\n",
            i / 200 + 1,
            i % 200
        ));
    }
    t
}

fn fixed_keys(site: &str) -> Result<sitelink_config::keys::PublicKey, String> {
    // A deterministic key per name, so properties do not depend on randomness.
    let mut bytes = [7u8; 32];
    for (i, b) in site.bytes().enumerate() {
        bytes[i % 32] ^= b;
    }
    let text = base64_of(&bytes);
    Ok(PrivateKey::from_base64(&text).unwrap().public_key())
}

fn base64_of(bytes: &[u8; 32]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn site_names() -> impl Strategy<Value = Vec<String>> {
    prop::collection::hash_set("[a-z][a-z0-9-]{0,11}", 2..10).prop_map(|s| s.into_iter().collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn render_is_deterministic(names in site_names(), nat in prop::option::of(0usize..10)) {
        let nat = nat.filter(|&i| i < names.len());
        let text = network_text(&names, nat);
        let a = parse(&text, "a").network.unwrap();
        let b = parse(&text, "b").network.unwrap();
        for s in &names {
            let ra = render(&a, s, fixed_keys).unwrap().to_toml();
            let rb = render(&b, s, fixed_keys).unwrap().to_toml();
            prop_assert_eq!(ra, rb);
        }
    }

    #[test]
    fn appending_a_site_keeps_existing_tunnels(names in site_names(), extra in "[a-z]{1,12}") {
        prop_assume!(!names.contains(&extra));
        let before = parse(&network_text(&names, None), "a").network.unwrap();
        let mut more = names.clone();
        more.push(extra);
        let after = parse(&network_text(&more, None), "b").network.unwrap();
        for s in &names {
            let old = render(&before, s, fixed_keys).unwrap();
            let new = render(&after, s, fixed_keys).unwrap();
            for iface in &old.interfaces {
                let same = new.interfaces.iter().find(|i| i.name == iface.name).unwrap();
                prop_assert_eq!(&same.addresses, &iface.addresses);
                prop_assert_eq!(same.listen_port, iface.listen_port);
                prop_assert_eq!(same.peer_address, iface.peer_address);
                prop_assert_eq!(&same.peers[0].endpoint, &iface.peers[0].endpoint);
            }
        }
    }
}
