//! `sitelink-router`: the device binary. A multi-call binary: what it does depends on the name it
//! is invoked under and its first argument. Today it only reports its version; the data plane,
//! route installer and init land in their own crates and are dispatched from here.
#![forbid(unsafe_code)]

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        None | Some("version" | "--version" | "-V") => {
            println!("sitelink-router {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("sitelink-router: unknown command {other:?}; valid: version");
            ExitCode::from(2)
        }
    }
}
