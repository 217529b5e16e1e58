//! Temporary driver until `sitelink build` is wired: `cargo run -p sitelink-image --example build
//! -- NETWORK.toml OUT [cloud|metal]`.
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: build NETWORK.toml OUT [cloud|metal]");
        return ExitCode::from(2);
    }
    let mut opts = sitelink_image::BuildOptions::new(&args[1], &args[2]);
    if let Some(p) = args.get(3) {
        match p.parse() {
            Ok(p) => opts.profile = p,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(2);
            }
        }
    }
    match sitelink_image::build(&opts) {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            eprintln!("build: {msg}");
            ExitCode::from(1)
        }
    }
}
