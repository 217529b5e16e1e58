//! `sitelink-router`: the device binary. A multi-call binary: what it does depends on the name it
//! is invoked under and its first argument.
//!
//! - `sitelink-wg [-f] IFNAME` (argv[0] file name) or `sitelink-router wg [-f] IFNAME`: the
//!   userspace WireGuard data plane (the wireguard-go process contract).
//! - `sitelink-router version`: the version.
#![forbid(unsafe_code)]

use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let invoked_as = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .and_then(|n| n.to_str())
        .unwrap_or("sitelink-router");
    if invoked_as == "sitelink-wg" {
        return sitelink_wg::cli::run("sitelink-wg", &args[1..]);
    }
    match args.get(1).map(String::as_str) {
        None | Some("version" | "--version" | "-V") => {
            println!("sitelink-router {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some("wg") => sitelink_wg::cli::run("sitelink-router wg", &args[2..]),
        Some(other) => {
            eprintln!("sitelink-router: unknown command {other:?}; valid: version, wg");
            ExitCode::from(2)
        }
    }
}
