//! `/proc/sys` reads and writes. `/proc/sys/net` shows the network namespace of the calling
//! thread, so these follow the reconciler into its namespace. Keys are paths below
//! `/proc/sys` (`net/ipv4/conf/wg-gcp/rp_filter`), so interface names may contain '.'.

use std::fs;

use crate::RoutesError;

/// Read a sysctl (`sysctl -n KEY`); `None` when it does not exist.
pub(crate) fn get(key: &str) -> Option<String> {
    fs::read_to_string(format!("/proc/sys/{key}"))
        .ok()
        .map(|s| s.trim().to_owned())
}

/// `sysctl -w KEY=VALUE` unless it already has that value. Returns whether it changed.
pub(crate) fn ensure(key: &str, value: &str) -> Result<bool, RoutesError> {
    if get(key).as_deref() == Some(value) {
        return Ok(false);
    }
    fs::write(format!("/proc/sys/{key}"), value).map_err(|errno| RoutesError::Sysctl {
        path: format!("/proc/sys/{key}"),
        value: value.to_owned(),
        errno,
    })?;
    Ok(true)
}

/// Whether IPv6 is available: the stack exists and `net.ipv6.conf.all.disable_ipv6` is 0.
pub(crate) fn v6_enabled() -> bool {
    get("net/ipv6/conf/all/disable_ipv6").as_deref() == Some("0")
}

/// Whether IPv6 is disabled on one interface (when it is enabled globally).
pub(crate) fn v6_disabled_on(ifname: &str) -> bool {
    get(&format!("net/ipv6/conf/{ifname}/disable_ipv6")).is_some_and(|v| v != "0")
}
