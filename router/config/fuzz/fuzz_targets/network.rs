//! The network parser must not panic on any input; an accepted network must render for every
//! site; every error has a place in the file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sitelink_config::keys::PublicKey;
use sitelink_config::network::parse;
use sitelink_config::site::{render, SiteConfig};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let parsed = parse(&text, "fuzz.toml");
    for d in &parsed.diagnostics {
        assert!(d.line >= 1 && d.col >= 1, "diagnostic without a place: {d}");
    }
    if let Some(net) = parsed.network {
        assert!(parsed.diagnostics.iter().all(|d| !d.is_error()));
        for site in &net.sites {
            let cfg = render(&net, &site.name, |_| Ok(PublicKey([1; 32]))).expect("an accepted network renders");
            let again = SiteConfig::parse(&cfg.to_toml(), "rendered").expect("a render parses back");
            assert_eq!(again, cfg);
        }
    }
});
