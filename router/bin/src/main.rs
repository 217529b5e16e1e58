//! `sitelink-router`: the device binary. A multi-call binary: what it does depends on the name it
//! is invoked under and its first argument.
//!
//! - `sitelink-router site CONFIG`: site mode, all of a site's tunnels and its route installer.
//! - `sitelink-router routed CONFIG`: only the route installer (interfaces run elsewhere).
//! - `sitelink-router status`: tunnels, probes and active routes of the running site.
//! - `sitelink-wg [-f] IFNAME` (argv[0] file name) or `sitelink-router wg [-f] IFNAME`: the
//!   userspace WireGuard data plane (the wireguard-go process contract).
//! - `sitelink-router version`: the version.
//! - PID 1 (unless given one of the commands above), or invoked as `/init` with no arguments: the
//!   image's init ([`sitelink_init::run`]).
//!   `sitelink-router init --check DIR` checks a config directory as the init would.
//!
//! Exit codes of `site` and `routed`: 0 stopped by a signal, 1 failed (restart me), 3 bad config
//! or key (do not restart until the config changes), 2 usage.
#![forbid(unsafe_code)]

use std::path::Path;
use std::process::ExitCode;

const USAGE: &str =
    "usage: sitelink-router site CONFIG | routed CONFIG | status | wg [-f] IFNAME | init --check DIR | version";

const COMMANDS: [&str; 8] = [
    "site",
    "routed",
    "status",
    "wg",
    "init",
    "version",
    "--version",
    "-V",
];

fn run_site(
    what: &str,
    config: Option<&String>,
    f: fn(&Path) -> Result<(), sitelink_site::SiteError>,
) -> ExitCode {
    let Some(config) = config else {
        eprintln!("sitelink-router {what}: missing CONFIG; {USAGE}");
        return ExitCode::from(2);
    };
    sitelink_site::init_logging();
    match f(Path::new(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sitelink-router {what}: {e}");
            ExitCode::from(if e.is_config_error() {
                sitelink_site::EXIT_CONFIG
            } else {
                1
            })
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let invoked_as = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .and_then(|n| n.to_str())
        .unwrap_or("sitelink-router");
    // The image's init: PID 1 (or `/init` without arguments), unless PID 1 was given one of our
    // commands (a container running `sitelink-router site CONFIG` as its entry point).
    let command =
        invoked_as == "sitelink-wg" || args.get(1).is_some_and(|a| COMMANDS.contains(&a.as_str()));
    if (std::process::id() == 1 && !command) || (args.len() == 1 && args[0] == "/init") {
        sitelink_init::run();
    }
    if invoked_as == "sitelink-wg" {
        return sitelink_wg::cli::run("sitelink-wg", &args[1..]);
    }
    match args.get(1).map(String::as_str) {
        None | Some("version" | "--version" | "-V") => {
            println!("sitelink-router {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some("site") => run_site("site", args.get(2), sitelink_site::run),
        Some("routed") => run_site("routed", args.get(2), sitelink_site::run_routed_only),
        Some("status") => match sitelink_site::status() {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sitelink-router status: {e} (is the site running?)");
                ExitCode::from(1)
            }
        },
        Some("wg") => sitelink_wg::cli::run("sitelink-router wg", &args[2..]),
        Some("init") => sitelink_init::cli(&args[2..]),
        Some(other) => {
            eprintln!("sitelink-router: unknown command {other:?}; {USAGE}");
            ExitCode::from(2)
        }
    }
}
