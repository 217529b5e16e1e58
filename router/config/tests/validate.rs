//! One test per kind of validation error: each names the field, the line, and what is valid.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic with context

use sitelink_config::network::parse;

const BASE: &str = r#"name = "t"

[[sites]]
name = "aws"
endpoint = "198.51.100.1:51820"
[sites.lan]
address = "10.1.0.1/24"

[[sites]]
name = "gcp"
endpoint = "198.51.100.2:51820"
[sites.lan]
address = "10.2.0.1/24"
"#;

/// Parse `text` and return the single error as `(line, path, message)`.
fn only_error(text: &str) -> (usize, String, String) {
    let parsed = parse(text, "net.toml");
    let errors: Vec<_> = parsed.errors().collect();
    assert!(
        parsed.network.is_none(),
        "an invalid network must not be returned"
    );
    assert_eq!(errors.len(), 1, "expected one error, got {errors:#?}");
    let e = errors[0];
    assert!(e
        .to_string()
        .starts_with(&format!("net.toml:{}:{}: ", e.line, e.col)));
    (e.line, e.path.clone(), e.message.clone())
}

fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .expect("needle in text")
        + 1
}

fn replace(from: &str, to: &str) -> String {
    assert!(BASE.contains(from), "{from:?} not in BASE");
    BASE.replacen(from, to, 1)
}

#[test]
fn base_is_valid() {
    let parsed = parse(BASE, "net.toml");
    assert!(parsed.diagnostics.is_empty(), "{:#?}", parsed.diagnostics);
    let net = parsed.network.unwrap();
    assert_eq!(net.links.len(), 1);
    assert_eq!(net.mtu, 1420);
    assert_eq!(net.route_table, 254);
    assert_eq!(net.probe.interval_ms, 1000);
    assert_eq!(net.sites[0].listen_port, 51820);
}

#[test]
fn unknown_key_on_line_1() {
    let text = format!("colour = \"red\"\n{BASE}");
    let (line, path, msg) = only_error(&text);
    assert_eq!((line, path.as_str()), (1, "colour"));
    assert!(
        msg.contains("unknown key `colour`") && msg.contains("`sites`"),
        "{msg}"
    );
}

#[test]
fn unknown_key_in_a_site() {
    let text = replace("name = \"gcp\"", "name = \"gcp\"\nzone = \"eu\"");
    let (line, path, msg) = only_error(&text);
    assert_eq!(
        (line, path.as_str()),
        (line_of(&text, "zone"), "sites[1].zone")
    );
    assert!(
        msg.contains("unknown key `zone`") && msg.contains("`endpoint`"),
        "{msg}"
    );
}

#[test]
fn bad_site_name() {
    for bad in ["AWS", "a_b", "-a", "", "thirteen-char"] {
        let text = replace("name = \"gcp\"", &format!("name = \"{bad}\""));
        let (line, path, msg) = only_error(&text);
        assert_eq!((line, path.as_str()), (10, "sites[1].name"), "{bad}");
        assert!(
            msg.contains("lowercase letters") && msg.contains("15 characters"),
            "{msg}"
        );
    }
    // Twelve characters is the longest name that fits `wg-<name>`.
    let ok = replace("name = \"gcp\"", "name = \"twelve-chars\"");
    assert!(parse(&ok, "n").network.is_some());
}

#[test]
fn duplicate_site() {
    let text = replace("name = \"gcp\"", "name = \"aws\"");
    let (line, path, msg) = only_error(&text);
    assert_eq!((line, path.as_str()), (10, "sites[1].name"));
    assert!(
        msg.contains("duplicate site \"aws\"") && msg.contains("line 4"),
        "{msg}"
    );
}

#[test]
fn overlapping_prefixes_name_both_sites() {
    let text = replace(
        "address = \"10.2.0.1/24\"",
        "address = \"10.2.0.1/24\"\nprefixes = [\"10.2.0.0/24\", \"10.1.0.0/16\"]",
    );
    let (line, path, msg) = only_error(&text);
    assert_eq!(
        (line, path.as_str()),
        (line_of(&text, "prefixes"), "sites[1].lan.prefixes[1]")
    );
    assert!(
        msg.contains("\"gcp\"") && msg.contains("\"aws\"") && msg.contains("10.1.0.0/24"),
        "{msg}"
    );
}

#[test]
fn prefix_with_host_bits() {
    let text = replace(
        "address = \"10.2.0.1/24\"",
        "address = \"10.2.0.1/24\"\nprefixes = [\"10.3.0.7/16\"]",
    );
    let (_, path, msg) = only_error(&text);
    assert_eq!(path, "sites[1].lan.prefixes[0]");
    assert!(
        msg.contains("host bits") && msg.contains("10.3.0.0/16"),
        "{msg}"
    );
}

#[test]
fn address_with_a_bad_prefix_length_says_so() {
    for (bad, want) in [
        ("10.2.0.1/33", "invalid prefix length (IPv4: 0 to 32)"),
        ("10.2.0.1", "has no prefix length"),
        ("fd00:2::1/129", "invalid prefix length (IPv6: 0 to 128)"),
        ("gcp.lan/24", "is not an address with prefix length"),
    ] {
        let text = replace("address = \"10.2.0.1/24\"", &format!("address = \"{bad}\""));
        let (_, path, msg) = only_error(&text);
        assert_eq!(path, "sites[1].lan.address", "{bad}");
        assert!(msg.contains(want), "{bad}: {msg}");
    }
}

#[test]
fn pool_too_small_for_the_links() {
    let mut text = replace(
        "name = \"t\"",
        "name = \"t\"\ntunnel_pool = \"10.255.0.0/30\"",
    );
    text.push_str("\n[[sites]]\nname = \"azure\"\nendpoint = \"198.51.100.3:51820\"\n[sites.lan]\naddress = \"10.3.0.1/24\"\n");
    let (line, path, msg) = only_error(&text);
    assert_eq!((line, path.as_str()), (2, "tunnel_pool"));
    assert!(
        msg.contains("holds 2 tunnel /31s") && msg.contains("need 3"),
        "{msg}"
    );
}

#[test]
fn pool_overlapping_a_lan() {
    let text = replace(
        "name = \"t\"",
        "name = \"t\"\ntunnel_pool = \"10.2.0.0/16\"",
    );
    let (_, path, msg) = only_error(&text);
    assert_eq!(path, "sites[1].lan.prefixes[0]");
    assert!(msg.contains("tunnel pool"), "{msg}");
}

#[test]
fn bad_ports() {
    let text = replace(
        "endpoint = \"198.51.100.2:51820\"",
        "endpoint = \"198.51.100.2:51820\"\nlisten_port = 0",
    );
    let (_, path, msg) = only_error(&text);
    assert_eq!(path, "sites[1].listen_port");
    assert!(msg.contains("use 1 to 65534"), "{msg}");

    let text = replace("198.51.100.2:51820", "198.51.100.2:65536");
    let (_, path, msg) = only_error(&text);
    assert_eq!(path, "sites[1].endpoint");
    assert!(msg.contains("1 to 65535"), "{msg}");

    // The last port must leave room for a tunnel per peer position.
    let text = replace("198.51.100.2:51820", "198.51.100.2:65535");
    let (_, path, msg) = only_error(&text);
    assert_eq!(path, "sites[1].endpoint");
    assert!(msg.contains("no room"), "{msg}");
}

#[test]
fn unbracketed_ipv6_endpoint() {
    let text = replace("198.51.100.2:51820", "2001:db8::2:51820");
    let (_, path, msg) = only_error(&text);
    assert_eq!(path, "sites[1].endpoint");
    assert!(msg.contains("[2001:db8::1]:51820"), "{msg}");
    let ok = replace("198.51.100.2:51820", "[2001:db8::2]:51820");
    assert!(parse(&ok, "n").network.is_some());
    let dns = replace("198.51.100.2:51820", "vpn.example.com:51820");
    assert!(parse(&dns, "n").network.is_some());
}

#[test]
fn links_to_unknown_sites_or_self() {
    let text = replace("name = \"t\"", "name = \"t\"\nlinks = [[\"aws\", \"gpc\"]]");
    let (line, path, msg) = only_error(&text);
    assert_eq!((line, path.as_str()), (2, "links[0]"));
    assert!(
        msg.contains("unknown site \"gpc\"") && msg.contains("aws, gcp"),
        "{msg}"
    );

    let text = replace("name = \"t\"", "name = \"t\"\nlinks = [[\"aws\", \"aws\"]]");
    let (_, path, msg) = only_error(&text);
    assert_eq!(path, "links[0]");
    assert!(msg.contains("itself"), "{msg}");

    let text = replace(
        "name = \"t\"",
        "name = \"t\"\nlinks = [[\"aws\", \"gcp\"], [\"gcp\", \"aws\"]]",
    );
    let (_, path, msg) = only_error(&text);
    assert_eq!(path, "links[1]");
    assert!(msg.contains("twice"), "{msg}");
}

#[test]
fn ipv6_all_zero_host_is_not_an_address() {
    // cases/routes.md R7: the subnet-router anycast address is never a host address.
    let text = replace(
        "address = \"10.2.0.1/24\"",
        "address = \"10.2.0.1/24\"\naddress6 = \"fd00:2::/64\"",
    );
    let (_, path, msg) = only_error(&text);
    assert_eq!(path, "sites[1].lan.address6");
    assert!(
        msg.contains("subnet-router anycast") && msg.contains("fd00:2::1/64"),
        "{msg}"
    );
    let text = replace("address = \"10.2.0.1/24\"", "address = \"fd00:2::/64\"");
    assert_eq!(only_error(&text).1, "sites[1].lan.address");
}

#[test]
fn ipv4_network_and_broadcast_are_not_addresses() {
    let text = replace("10.2.0.1/24", "10.2.0.0/24");
    assert!(only_error(&text).2.contains("network address"));
    let text = replace("10.2.0.1/24", "10.2.0.255/24");
    assert!(only_error(&text).2.contains("broadcast"));
}

#[test]
fn missing_endpoint_and_nat_rules() {
    let text = replace("endpoint = \"198.51.100.2:51820\"\n", "");
    let (_, path, msg) = only_error(&text);
    assert_eq!(path, "sites[1].endpoint");
    assert!(msg.contains("behind_nat"), "{msg}");

    let text = replace("name = \"gcp\"", "name = \"gcp\"\nbehind_nat = true");
    let (_, path, _) = only_error(&text);
    assert_eq!(path, "sites[1].endpoint");

    let both = replace("endpoint = \"198.51.100.1:51820\"", "behind_nat = true").replacen(
        "endpoint = \"198.51.100.2:51820\"",
        "behind_nat = true",
        1,
    );
    let (_, path, msg) = only_error(&both);
    assert_eq!(path, "links");
    assert!(msg.contains("both behind NAT"), "{msg}");
}

#[test]
fn static_wan_needs_address_and_gateway_in_its_subnet() {
    let text = replace("[sites.lan]\naddress = \"10.2.0.1/24\"", "[sites.wan]\nmode = \"static\"\naddress = \"198.51.100.2/24\"\ngateway = \"203.0.113.1\"\n[sites.lan]\naddress = \"10.2.0.1/24\"");
    let (_, path, msg) = only_error(&text);
    assert_eq!(path, "sites[1].wan.gateway");
    assert!(msg.contains("not inside 198.51.100.0/24"), "{msg}");

    let text = replace(
        "[sites.lan]\naddress = \"10.2.0.1/24\"",
        "[sites.wan]\nmode = \"static\"\n[sites.lan]\naddress = \"10.2.0.1/24\"",
    );
    assert_eq!(only_error(&text).1, "sites[1].wan.address");

    let text = replace(
        "[sites.lan]\naddress = \"10.2.0.1/24\"",
        "[sites.wan]\nmode = \"ppp\"\n[sites.lan]\naddress = \"10.2.0.1/24\"",
    );
    assert!(only_error(&text).2.contains("\"dhcp\" or \"static\""));

    let text = replace(
        "[sites.lan]\naddress = \"10.2.0.1/24\"",
        "[sites.wan]\naddress = \"198.51.100.2/24\"\n[sites.lan]\naddress = \"10.2.0.1/24\"",
    );
    assert!(only_error(&text)
        .2
        .contains("only applies to mode = \"static\""));
}

#[test]
fn probe_and_network_settings_have_ranges() {
    for (key, val, path) in [
        ("probe]\ninterval_ms", "10", "probe.interval_ms"),
        ("probe]\ndown_after", "0", "probe.down_after"),
        ("probe]\nup_after", "1000", "probe.up_after"),
    ] {
        let text = replace("name = \"t\"", &format!("name = \"t\"\n[{key} = {val}"));
        let (_, p, msg) = only_error(&text);
        assert_eq!(p, path);
        assert!(msg.contains(" to "), "{msg}");
    }
    for (key, val) in [
        ("mtu", "100"),
        ("route_table", "255"),
        ("route_table", "0"),
        ("persistent_keepalive", "0"),
    ] {
        let text = replace("name = \"t\"", &format!("name = \"t\"\n{key} = {val}"));
        assert_eq!(only_error(&text).1, key);
    }
}

#[test]
fn wrong_types_and_missing_keys_are_located() {
    let text = replace("endpoint = \"198.51.100.2:51820\"", "endpoint = 51820");
    let (line, path, msg) = only_error(&text);
    assert_eq!((line, path.as_str()), (11, "sites[1].endpoint"));
    assert!(msg.contains("string"), "{msg}");

    let text = replace("[sites.lan]\naddress = \"10.2.0.1/24\"\n", "");
    let (_, path, msg) = only_error(&text);
    assert_eq!(path, "sites[1].lan");
    assert!(msg.contains("address"), "{msg}");
}

#[test]
fn every_error_is_reported_in_one_run() {
    let text = replace("name = \"aws\"", "name = \"AWS\"")
        .replacen("10.2.0.1/24", "10.2.0.1", 1)
        .replacen("198.51.100.2:51820", "2001:db8::2:51820", 1);
    let parsed = parse(&text, "net.toml");
    let paths: Vec<_> = parsed.errors().map(|d| d.path.as_str()).collect();
    assert_eq!(
        paths,
        ["sites[0].name", "sites[1].endpoint", "sites[1].lan.address"]
    );
}

#[test]
fn unreachable_pairs_are_a_warning() {
    let mut text = replace("name = \"t\"", "name = \"t\"\nlinks = [[\"aws\", \"gcp\"]]");
    text.push_str("\n[[sites]]\nname = \"azure\"\nendpoint = \"198.51.100.3:51820\"\n[sites.lan]\naddress = \"10.3.0.1/24\"\n");
    let parsed = parse(&text, "net.toml");
    assert!(parsed.network.is_some());
    let warnings: Vec<String> = parsed.diagnostics.iter().map(ToString::to_string).collect();
    assert_eq!(warnings.len(), 2, "{warnings:#?}");
    assert!(warnings[0].contains("warning: links:") && warnings[0].contains("\"azure\""));
}

#[test]
fn syntax_errors_have_a_place() {
    let text = replace("name = \"gcp\"", "name = \"gcp");
    let (line, _, _) = only_error(&text);
    assert_eq!(line, 10);
}

#[test]
fn shared_wan_addresses_endpoints_and_lans_over_wans_are_refused() {
    let wan = |addr: &str| {
        format!(
            "[sites.wan]\nmode = \"static\"\naddress = \"{addr}\"\ngateway = \"198.51.100.254\"\n"
        )
    };
    let text = replace(
        "[sites.lan]\naddress = \"10.1.0.1/24\"",
        &format!(
            "{}[sites.lan]\naddress = \"10.1.0.1/24\"",
            wan("198.51.100.1/24")
        ),
    )
    .replacen(
        "[sites.lan]\naddress = \"10.2.0.1/24\"",
        &format!(
            "{}[sites.lan]\naddress = \"10.2.0.1/24\"",
            wan("198.51.100.1/24")
        ),
        1,
    );
    let (_, path, msg) = only_error(&text);
    assert_eq!(path, "sites[1].wan.address");
    assert!(msg.contains("site \"aws\""), "{msg}");

    let text = replace("198.51.100.2:51820", "198.51.100.1:51820");
    let (_, path, msg) = only_error(&text);
    assert_eq!(path, "sites[1].endpoint");
    assert!(msg.contains("site \"aws\""), "{msg}");

    let text = replace(
        "[sites.lan]\naddress = \"10.1.0.1/24\"",
        &format!(
            "{}[sites.lan]\naddress = \"10.1.0.1/24\"",
            wan("198.51.100.1/24")
        ),
    )
    .replacen("10.2.0.1/24", "198.51.100.9/24", 1);
    let (_, path, msg) = only_error(&text);
    assert_eq!(path, "sites[1].lan.prefixes[0]");
    assert!(
        msg.contains("WAN subnet 198.51.100.0/24 of site \"aws\""),
        "{msg}"
    );
}

#[test]
fn large_networks_validate_quickly() {
    let mut text = String::from("name = \"big\"\ntunnel_pool = \"10.128.0.0/14\"\n");
    for i in 0..500 {
        text.push_str(&format!("[[sites]]\nname = \"s{i}\"\nendpoint = \"198.51.{}.{}:40000\"\n[sites.lan]\naddress = \"10.{}.{}.1/24\"\n", i / 250, i % 250 + 1, i / 250 + 1, i % 250));
    }
    let start = std::time::Instant::now();
    let parsed = parse(&text, "big.toml");
    assert!(
        parsed.network.is_some(),
        "{:#?}",
        parsed.diagnostics.first()
    );
    assert!(
        start.elapsed().as_secs_f64() < 5.0,
        "500 sites took {:?}",
        start.elapsed()
    );
}
