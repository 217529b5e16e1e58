//! sitelink's userspace WireGuard data plane.
//!
//! boringtun's `noise::Tunn` is the protocol engine (one per peer); everything around it is
//! ours: the TUN and UDP loops ([`device`]), the control socket protocol ([`uapi`]) and its
//! state machine ([`state`]), the cryptokey routing table ([`allowed_ips`]), and the
//! `sitelink-wg IFNAME` process contract ([`cli`]). All `unsafe` code is in `sys`.

pub mod allowed_ips;
pub mod cli;
pub mod device;
pub mod offload;
pub mod state;
mod sys;
pub mod uapi;

pub use device::{receive_datagram, Device, Prepared, StartDeviceError, StopReason};
pub use state::{DeviceState, Host, SetError};

/// Runs one control-socket request (`get=1\n\n` or `set=1\n...\n\n`) against `state` and returns
/// the reply text, exactly as the daemon answers it on the socket. Used by tests and the fuzzer.
pub fn handle_request(state: &mut DeviceState, request: &str, host: &mut dyn Host) -> String {
    let mut lines = request.split('\n');
    let first = lines.next().unwrap_or("");
    let body: Vec<&str> = lines.take_while(|l| !l.is_empty()).collect();
    device::run_request(state, first, &body, host).0
}
