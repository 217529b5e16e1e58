//! Temporary driver until `sitelink build` is wired into the CLI; compiles the root package's
//! `src/build.rs` as is. `cargo run -p sitelink-image --example build -- NETWORK.toml OUT
//! [cloud|metal [KEYS_DIR]]`.
use std::path::Path;
use std::process::ExitCode;

#[path = "../../src/build.rs"]
mod build;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: build NETWORK.toml OUT [cloud|metal [KEYS_DIR]]");
        return ExitCode::from(2);
    }
    let profile = args.get(3).map_or("cloud", String::as_str);
    let keys = args.get(4).map(Path::new);
    match build::build(
        Path::new(&args[1]),
        Path::new(&args[2]),
        profile,
        "kernel-initrd",
        None,
        keys,
    ) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("build: {e:#}");
            ExitCode::from(1)
        }
    }
}
