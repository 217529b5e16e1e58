//! boot(): everything before the services start. Mount the API file systems, load modules,
//! bring up `lo`; once a config is found: hostname, NICs, sysctls.

use std::fs;
use std::path::Path;

use ipnet::IpNet;
use nix::mount::{mount, MsFlags};
use sitelink_config::network::WanMode;
use sitelink_config::site::SiteConfig;

use crate::net::{self, Link, Netlink};
use crate::{kmod, say};

/// Mount /proc, /sys, /dev, /run, /tmp. Failures are reported, not fatal.
pub fn mounts() {
    let table: [(&str, &str, MsFlags, Option<&str>); 5] = [
        (
            "proc",
            "/proc",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None,
        ),
        (
            "sysfs",
            "/sys",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None,
        ),
        ("devtmpfs", "/dev", MsFlags::MS_NOSUID, Some("mode=0755")),
        (
            "tmpfs",
            "/run",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0755"),
        ),
        (
            "tmpfs",
            "/tmp",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=1777"),
        ),
    ];
    for (fstype, target, flags, data) in table {
        let _ = fs::create_dir_all(target);
        if let Err(e) = mount(Some(fstype), target, Some(fstype), flags, data) {
            say!("cannot mount {fstype} on {target}: {}", e.desc());
        }
    }
}

/// Load the initramfs's modules.
pub fn modules() {
    let (loaded, failed) = kmod::load_all(Path::new(kmod::MODULE_DIR));
    say!("loaded {loaded} kernel modules");
    for f in failed {
        say!("{f}");
    }
}

/// `ip link set lo up`
pub fn loopback() {
    let r = Netlink::open().and_then(|mut nl| {
        let lo = nl.links()?.into_iter().find(|l| l.name == "lo");
        match lo {
            Some(lo) => nl.up(lo.index),
            None => Err(std::io::Error::other("no lo")),
        }
    });
    if let Err(e) = r {
        say!("cannot bring up lo: {e}");
    }
}

/// Write a sysctl (`/proc/sys/...`), reporting failures.
pub fn sysctl(key: &str, value: &str) {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    if let Err(e) = fs::write(&path, value) {
        say!("sysctl {key}={value}: {e}");
    }
}

/// Forwarding on; loose reverse-path filtering on interfaces created from now on (the tunnels:
/// transit traffic arrives on tunnels whose source is not routed back the same way). `all` stays
/// 0 because the effective value is max(all, interface): the NICs, which exist already, keep
/// their 0, so DHCP answers from a server we have no route to yet are not dropped as martians.
pub fn sysctls() {
    sysctl("net.ipv4.ip_forward", "1");
    sysctl("net.ipv4.conf.all.rp_filter", "0");
    sysctl("net.ipv4.conf.default.rp_filter", "2");
    sysctl("net.ipv6.conf.all.forwarding", "1");
}

/// The NICs to use as WAN and LAN: by MAC when the config names one, else WAN is the first
/// Ethernet NIC and LAN the next.
pub fn pick_nics<'a>(
    nics: &'a [Link],
    wan_mac: Option<&str>,
    lan_mac: Option<&str>,
) -> (Option<&'a Link>, Option<&'a Link>) {
    let by_mac = |mac: Option<&str>| {
        mac.and_then(|m| {
            nics.iter()
                .find(|l| l.mac.as_deref().is_some_and(|x| x.eq_ignore_ascii_case(m)))
        })
    };
    let wan = by_mac(wan_mac).or_else(|| {
        nics.iter().find(|l| {
            !lan_mac.is_some_and(|m| l.mac.as_deref().is_some_and(|x| x.eq_ignore_ascii_case(m)))
        })
    });
    let lan = by_mac(lan_mac).or_else(|| {
        nics.iter()
            .find(|l| Some(l.index) != wan.map(|w| w.index) && lan_mac.is_none())
    });
    (wan, lan)
}

fn setup_nic(
    nl: &mut Netlink,
    link: &Link,
    name: &str,
    addr: Option<IpNet>,
) -> std::io::Result<()> {
    if link.name != name {
        nl.rename(link.index, name)?;
        say!(
            "{}: renamed {name} ({})",
            link.name,
            link.mac.as_deref().unwrap_or("no MAC")
        );
    }
    nl.up(link.index)?;
    if let Some(a) = addr {
        nl.add_addr(link.index, a)?;
        say!("{name}: address {a}");
    }
    Ok(())
}

/// Name and address the NICs: WAN `wan0` (static, or DHCP), LAN `lan0` (static). Returns the
/// WAN link when DHCP should run on it.
pub fn network(cfg: &SiteConfig) -> Option<Link> {
    let mut nl = match Netlink::open() {
        Ok(nl) => nl,
        Err(e) => {
            say!("cannot open rtnetlink: {e}");
            return None;
        }
    };
    let nics: Vec<Link> = nl
        .links()
        .unwrap_or_default()
        .into_iter()
        .filter(|l| l.ether && l.name != "lo")
        .collect();
    let (wan, lan) = pick_nics(&nics, cfg.wan.mac.as_deref(), cfg.lan.mac.as_deref());
    let mut dhcp = None;
    match wan {
        None => say!("no NIC for the WAN; tunnels start anyway and wait for one"),
        Some(w) => {
            let addr = match cfg.wan.mode {
                WanMode::Static => cfg.wan.address,
                WanMode::Dhcp => None,
            };
            match setup_nic(&mut nl, w, "wan0", addr) {
                Err(e) => say!("wan0: {e}"),
                Ok(()) => match cfg.wan.mode {
                    WanMode::Static => {
                        if let Some(gw) = cfg.wan.gateway.and_then(net::v4) {
                            match nl.default_route(w.index, gw) {
                                Ok(()) => say!("wan0: default via {gw}"),
                                Err(e) => say!("wan0: default route via {gw}: {e}"),
                            }
                        }
                    }
                    WanMode::Dhcp => {
                        dhcp = Some(Link {
                            name: "wan0".into(),
                            ..w.clone()
                        })
                    }
                },
            }
        }
    }
    match lan {
        None => say!("no NIC for the LAN"),
        Some(l) => {
            if let Err(e) = setup_nic(&mut nl, l, "lan0", Some(cfg.lan.address)) {
                say!("lan0: {e}");
            }
            if let Some(a6) = cfg.lan.address6 {
                if let Err(e) = nl.add_addr(l.index, a6) {
                    say!("lan0: {a6}: {e}");
                }
            }
        }
    }
    dhcp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nic(index: u32, mac: &str) -> Link {
        Link {
            index,
            name: format!("eth{index}"),
            mac: Some(mac.into()),
            ether: true,
            up: false,
        }
    }

    #[test]
    fn wan_is_first_nic_unless_a_mac_is_named() {
        let nics = [nic(2, "52:54:00:00:00:01"), nic(3, "52:54:00:00:00:02")];
        let (w, l) = pick_nics(&nics, None, None);
        assert_eq!((w.map(|x| x.index), l.map(|x| x.index)), (Some(2), Some(3)));
        let (w, l) = pick_nics(&nics, Some("52:54:00:00:00:02"), None);
        assert_eq!((w.map(|x| x.index), l.map(|x| x.index)), (Some(3), Some(2)));
        let (w, l) = pick_nics(&nics, None, Some("52:54:00:00:00:01"));
        assert_eq!((w.map(|x| x.index), l.map(|x| x.index)), (Some(3), Some(2)));
        let (w, l) = pick_nics(&[], None, None);
        assert!(w.is_none() && l.is_none());
    }
}
