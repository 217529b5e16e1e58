//! The sitelink model: a network description (`configs/*.toml`) is parsed, validated and
//! rendered into the per-site config a router reads. No sockets, no processes.
//!
//! | module | does |
//! |---|---|
//! | [`network`] | the network file: raw serde types, validation, typed [`network::Network`] |
//! | [`site`] | the site config a router reads, and [`site::render`] from a network |
//! | [`keys`] | WireGuard keys and the build host's keystore |
//! | [`endpoint`] | `host:port` endpoints |
//! | [`diag`] | `FILE:LINE:COL: field: message` diagnostics |
//! | [`wgquick`] | wg-quick / wg config files |
#![forbid(unsafe_code)]

pub mod diag;
pub mod endpoint;
pub mod keys;
pub mod network;
pub mod site;
pub mod wgquick;
