//! The sitelink model: a network description (`configs/*.toml`) is parsed, validated and
//! rendered into the per-site config a router reads. No sockets, no processes.
#![forbid(unsafe_code)]

pub mod endpoint;
pub mod wgquick;
