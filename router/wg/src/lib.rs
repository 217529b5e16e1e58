//! sitelink's userspace WireGuard data plane.
//!
//! boringtun's `noise::Tunn` is the protocol engine (one per peer); everything around it is
//! ours: the TUN and UDP loops ([`device`]), the control socket protocol ([`uapi`]) and its
//! state machine ([`state`]), the cryptokey routing table ([`allowed_ips`]), and the
//! `sitelink-wg IFNAME` process contract ([`cli`]). All `unsafe` code is in `sys`.

pub mod allowed_ips;
pub mod cli;
pub mod device;
pub mod state;
mod sys;
pub mod uapi;

pub use device::{Device, Prepared, StartDeviceError, StopReason};
pub use state::{DeviceState, Host, SetError};
