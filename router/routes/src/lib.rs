//! The sitelink route installer: keeps the kernel in step with a router's site config.
//!
//! | module | does |
//! |---|---|
//! | [`desired`] | what the kernel should hold, computed from a `SiteConfig` and tunnel health (pure) |
//! | [`diff`] | kernel state vs desired state → the minimal list of operations (pure) |
//! | `netlink` | a synchronous, pipelined rtnetlink socket: dumps and batched requests |
//! | [`reconcile`] | [`Reconciler`]: dump, diff, apply; withdraw everything it owns |
//! | [`probe`] | the BFD-like probe state machine (pure, time passed in) and handshake freshness |
//! | [`routed`] | [`run_routed`]: reconcile + probes until stopped, then withdraw |
//! | [`status`] | [`Status`]: per-tunnel probe state and RTT, active route per prefix |
//! | [`netns`] | entering / creating network namespaces (tests and the benchmark) |
//! | [`bench`] | [`bench()`]: 10,000 routes cold apply, second apply, withdraw |
//!
//! Ownership: every route, rule and address this crate creates carries the routing protocol
//! number [`RTPROT_SITELINK`] (`rtm_protocol`, `FRA_PROTOCOL`, `IFA_PROTO`). Only objects with that
//! number are ever changed or deleted; anything else is somebody else's and is left alone.
//!
//! No `unsafe` anywhere: netlink goes through `netlink-sys`' safe socket, namespaces through
//! `nix::sched::setns`/`unshare`.
#![forbid(unsafe_code)]

pub mod bench;
pub mod desired;
pub mod diff;
mod error;
mod netlink;
pub mod netns;
pub mod probe;
pub mod reconcile;
pub mod routed;
pub mod status;
mod sysctl;

pub use bench::{bench, BenchReport};
pub use desired::{Desired, DesiredAddr, DesiredLink, DesiredRoute, DesiredRule, Target};
pub use error::RoutesError;
pub use probe::{
    HandshakeSource, ProbeMachine, ProbeParams, ProbeState, Transition, HANDSHAKE_STALE,
};
pub use reconcile::{ApplyReport, Conflict, Options, Reconciler};
pub use routed::{run_routed, run_routed_with, stop_on_signals, RoutedOptions};
pub use status::{PrefixStatus, Status, TunnelStatus};

/// The `rtm_protocol` / `FRA_PROTOCOL` / `IFA_PROTO` number that marks routes, rules and
/// addresses as sitelink's. 83 (ASCII 'S') is not in iproute2's `rt_protos` (0-18, 42 babel,
/// 99 openr, 186-192 bgp/isis/ospf/rip/eigrp) and not used by common daemons (bird/zebra use
/// 12/11, Calico 80). `ip route show proto 83` lists ours.
pub const RTPROT_SITELINK: u8 = 83;

/// The table that holds only direct-tunnel routes, consulted for packets that arrive on a
/// tunnel (the loop-free transit rule). See [`desired`].
pub const DIRECT_TABLE: u32 = 51898;

/// Priority of the `iif <tunnel> lookup DIRECT_TABLE` rules.
pub const RULE_PREF_TRANSIT: u32 = 10890;

/// Priority of the `lookup <route_table>` rule added when the route table is not `main`.
pub const RULE_PREF_TABLE: u32 = 10891;

/// Metric of the terminating `unreachable` routes in [`DIRECT_TABLE`].
pub const METRIC_UNREACHABLE: u32 = 10000;
