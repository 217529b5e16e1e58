//! Temporary driver for `src/bench.rs` until `sitelink bench dataplane` is wired into the host
//! CLI: `cargo run --release -p sitelink-wg --example bench_dataplane -- [SECONDS] [ROUTER_BIN]`.
#![allow(missing_debug_implementations)]

#[path = "../../../src/bench.rs"]
mod bench;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let seconds = args.next().map(|s| s.parse()).transpose()?.unwrap_or(10);
    let bin = args.next().map(std::path::PathBuf::from);
    bench::dataplane(bin.as_deref(), seconds)
}
