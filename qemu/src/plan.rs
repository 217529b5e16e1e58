//! The lab's wiring, computed from a network without touching the system (unit-testable).
//!
//! ```text
//!   [sl_N_l_aws] eth0 ── lan0 [sl_N_r_aws] wan0 ═╗
//!   [sl_N_l_gcp] eth0 ── lan0 [sl_N_r_gcp] wan0 ═╬═ lab switch + gw0 [sl_N_inet]
//!   [sl_N_l_office] eth0 ── lan0 [sl_N_r_office] wan0 ── in0 [sl_N_n_office] out0 ═╝
//! ```
//! Namespaces: `sl_<network>_inet` (the internet: the userspace switch and `gw0`, the WAN
//! gateway), per site `sl_<network>_r_<site>` (router), `sl_<network>_l_<site>` (LAN host at
//! .10) and, for a site behind NAT, `sl_<network>_n_<site>` (a masquerading NAT box). Each site's
//! WAN is a switch port (TAP) moved into its router or NAT box; the switch delays each frame by
//! its sender's one-way delay (see [`crate::switch`]), so the round trip between two sites is the
//! sum of their delays.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};
use sitelink_config::endpoint::Endpoint;
use sitelink_config::network::{Network, WanMode};

/// Why a network cannot be built as a lab.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("site {site:?}: the lab needs a static WAN address (sites.wan.mode = \"static\"); the lab has no DHCP server")]
    NotStatic { site: String },
    #[error("site {site:?}: WAN {addr} is not in the lab internet {subnet} that the first site defines; put every site that is not behind NAT on one subnet with one gateway")]
    OtherSubnet {
        site: String,
        addr: IpNet,
        subnet: Ipv4Net,
    },
    #[error("site {site:?}: the lab needs IPv4 WAN addresses")]
    NotIpv4 { site: String },
    #[error("site {site:?}: endpoint {endpoint} must be the site's WAN address {addr} in the lab")]
    EndpointMismatch {
        site: String,
        endpoint: String,
        addr: IpAddr,
    },
    #[error("no free address left in {subnet} for the NAT box of site {site:?}")]
    NoNatAddress { site: String, subnet: Ipv4Net },
    #[error("the lab needs at least one site that is not behind NAT")]
    NoInternet,
    #[error("site {site:?}: its LAN {lan} has no room for the lab host at .10")]
    NoLanHost { site: String, lan: IpNet },
    #[error("network name {name:?} is too long for the lab: {path} must stay under 108 bytes (a Unix socket path); use a name of at most {max} characters")]
    NameTooLong {
        name: String,
        path: String,
        max: usize,
    },
}

/// Where the lab keeps its per-run files: `RUN_ROOT/<network>/...`.
pub const RUN_ROOT: &str = "/run/sitelink-lab";
/// The longest file name under a site's run directory (a Unix socket).
const LONGEST_SOCKET: &str = "console.sock";

/// A NAT box in front of a site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatPlan {
    pub ns: String,
    /// Inside address (the site's WAN gateway) with the site's WAN prefix length.
    pub inside: IpNet,
    /// Outside address on the lab internet: what peers see as the site's source.
    pub outside: Ipv4Net,
}

/// One site in the lab.
#[derive(Debug, Clone, PartialEq)]
pub struct SitePlan {
    pub name: String,
    pub router_ns: String,
    pub lan_ns: String,
    /// The router's WAN address and gateway.
    pub wan: IpNet,
    pub gateway: IpAddr,
    /// The address peers see (the WAN address, or the NAT box's outside address).
    pub public: Ipv4Addr,
    pub nat: Option<NatPlan>,
    pub lan: IpNet,
    pub lan6: Option<IpNet>,
    /// The LAN host: .10 of the LAN subnet.
    pub host: IpNet,
    pub host6: Option<IpNet>,
    /// Name of this site's port (TAP) on the lab switch.
    pub bridge_port: String,
    pub delay_ms: f64,
}

/// The whole lab.
#[derive(Debug, Clone, PartialEq)]
pub struct LabPlan {
    pub network: String,
    pub inet_ns: String,
    /// The address of `gw0` in the internet namespace: the WAN gateway of the sites that are not behind NAT.
    pub internet: Ipv4Net,
    pub sites: Vec<SitePlan>,
}

/// Prefix of every namespace of the lab of `network`. `_` appears in no network or site name, so
/// the prefix of network "seed" never matches the namespaces of network "seed-mesh".
pub fn ns_prefix(network: &str) -> String {
    format!("sl_{network}_")
}

/// The address `offset` hosts into the subnet of `net`.
fn nth_host(net: &IpNet, offset: u32) -> Option<IpNet> {
    let addr = match net.trunc() {
        IpNet::V4(n) => IpAddr::V4(Ipv4Addr::from(u32::from(n.network()).checked_add(offset)?)),
        IpNet::V6(n) => IpAddr::V6(std::net::Ipv6Addr::from(
            u128::from(n.network()).checked_add(u128::from(offset))?,
        )),
    };
    let host = IpNet::new(addr, net.prefix_len()).ok()?;
    (net.contains(&addr) && addr != net.addr()).then_some(host)
}

impl LabPlan {
    pub fn new(net: &Network) -> Result<LabPlan, PlanError> {
        let prefix = ns_prefix(&net.name);
        // Unix socket paths (the VMs' consoles and QMP) are limited to 107 bytes.
        if let Some(longest) = net.sites.iter().map(|s| s.name.len()).max() {
            let path = format!("{RUN_ROOT}/{}/{:x<longest$}/{LONGEST_SOCKET}", net.name, "");
            if path.len() > 107 {
                return Err(PlanError::NameTooLong {
                    name: net.name.clone(),
                    path,
                    max: 107 - (RUN_ROOT.len() + longest + LONGEST_SOCKET.len() + 3),
                });
            }
        }
        // The internet: the subnet and gateway of the first site that is not behind NAT.
        let first = net
            .sites
            .iter()
            .find(|s| !s.behind_nat)
            .ok_or(PlanError::NoInternet)?;
        let (Some(IpNet::V4(first_wan)), Some(IpAddr::V4(gw))) =
            (first.wan.address, first.wan.gateway)
        else {
            return Err(if first.wan.mode == WanMode::Static {
                PlanError::NotIpv4 {
                    site: first.name.clone(),
                }
            } else {
                PlanError::NotStatic {
                    site: first.name.clone(),
                }
            });
        };
        let internet =
            Ipv4Net::new(gw, first_wan.prefix_len()).map_err(|_| PlanError::NotIpv4 {
                site: first.name.clone(),
            })?;
        let subnet = internet.trunc();
        let mut used: Vec<Ipv4Addr> = vec![gw];
        for s in net.sites.iter().filter(|s| !s.behind_nat) {
            if let Some(IpNet::V4(a)) = s.wan.address {
                used.push(a.addr());
            }
        }

        let mut sites = Vec::new();
        for (i, s) in net.sites.iter().enumerate() {
            let site = s.name.clone();
            let (Some(wan), Some(gateway)) = (s.wan.address, s.wan.gateway) else {
                return Err(PlanError::NotStatic { site });
            };
            let IpNet::V4(wan4) = wan else {
                return Err(PlanError::NotIpv4 { site });
            };
            let nat = if s.behind_nat {
                let outside = (1..u32::from(subnet.broadcast()) - u32::from(subnet.network()))
                    .map(|k| Ipv4Addr::from(u32::from(subnet.broadcast()) - k))
                    .find(|a| !used.contains(a))
                    .ok_or_else(|| PlanError::NoNatAddress {
                        site: site.clone(),
                        subnet,
                    })?;
                used.push(outside);
                Some(NatPlan {
                    ns: format!("{prefix}n_{site}"),
                    inside: IpNet::new(gateway, wan.prefix_len())
                        .map_err(|_| PlanError::NotIpv4 { site: site.clone() })?,
                    outside: Ipv4Net::new(outside, subnet.prefix_len()).unwrap_or(subnet),
                })
            } else {
                if !subnet.contains(&wan4.addr()) || gateway != IpAddr::V4(gw) {
                    return Err(PlanError::OtherSubnet {
                        site,
                        addr: wan,
                        subnet,
                    });
                }
                if let Some(e) = &s.endpoint {
                    let matches =
                        matches!(e, Endpoint::Addr(a) if a.ip() == IpAddr::V4(wan4.addr()));
                    if !matches {
                        return Err(PlanError::EndpointMismatch {
                            site,
                            endpoint: e.to_string(),
                            addr: IpAddr::V4(wan4.addr()),
                        });
                    }
                }
                None
            };
            let public = nat.as_ref().map_or(wan4.addr(), |n| n.outside.addr());
            let host = nth_host(&s.lan.address, 10).filter(|h| h.addr() != s.lan.address.addr());
            let host = host.ok_or_else(|| PlanError::NoLanHost {
                site: site.clone(),
                lan: s.lan.address,
            })?;
            let host6 = s.lan.address6.as_ref().and_then(|a| nth_host(a, 0x10));
            sites.push(SitePlan {
                router_ns: format!("{prefix}r_{site}"),
                lan_ns: format!("{prefix}l_{site}"),
                name: site,
                wan,
                gateway,
                public,
                nat,
                lan: s.lan.address,
                lan6: s.lan.address6,
                host,
                host6,
                bridge_port: format!("w-{i}"),
                delay_ms: s.lab_delay_ms,
            });
        }
        Ok(LabPlan {
            network: net.name.clone(),
            inet_ns: format!("{prefix}inet"),
            internet,
            sites,
        })
    }

    pub fn site(&self, name: &str) -> Option<&SitePlan> {
        self.sites.iter().find(|s| s.name == name)
    }

    /// Every namespace of the lab, in creation order.
    pub fn namespaces(&self) -> Vec<String> {
        let mut v = vec![self.inet_ns.clone()];
        for s in &self.sites {
            v.push(s.router_ns.clone());
            v.push(s.lan_ns.clone());
            if let Some(n) = &s.nat {
                v.push(n.ns.clone());
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed() -> Network {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../configs/seed-mesh.toml"
        ))
        .unwrap();
        sitelink_config::network::parse(&text, "seed-mesh.toml")
            .network
            .unwrap()
    }

    #[test]
    fn seed_mesh_lab() {
        let plan = LabPlan::new(&seed()).unwrap();
        assert_eq!(plan.inet_ns, "sl_seed-mesh_inet");
        assert_eq!(plan.internet.to_string(), "198.51.100.254/24");
        let aws = plan.site("aws").unwrap();
        assert_eq!(
            (aws.router_ns.as_str(), aws.lan_ns.as_str()),
            ("sl_seed-mesh_r_aws", "sl_seed-mesh_l_aws")
        );
        assert_eq!(aws.host.to_string(), "10.1.0.10/24");
        assert_eq!(aws.public.to_string(), "198.51.100.1");
        assert!(aws.nat.is_none());
        let office = plan.site("office").unwrap();
        let nat = office.nat.as_ref().unwrap();
        assert_eq!(nat.inside.to_string(), "172.16.4.1/24");
        assert_eq!(nat.outside.to_string(), "198.51.100.253/24");
        assert_eq!(office.public, nat.outside.addr());
        assert_eq!(office.host.to_string(), "192.168.10.10/24");
        assert_eq!(plan.namespaces().len(), 1 + 4 * 2 + 1);
    }

    #[test]
    fn long_names_are_refused_before_anything_starts() {
        let mut net = seed();
        net.name = "n".repeat(70);
        let err = LabPlan::new(&net).unwrap_err().to_string();
        assert!(err.contains("at most 69 characters"), "{err}");
        net.name = "n".repeat(69);
        assert!(LabPlan::new(&net).is_ok());
    }

    #[test]
    fn dhcp_sites_cannot_be_labbed() {
        let mut net = seed();
        net.sites[1].wan.mode = WanMode::Dhcp;
        net.sites[1].wan.address = None;
        net.sites[1].wan.gateway = None;
        let err = LabPlan::new(&net).unwrap_err().to_string();
        assert!(err.contains("\"gcp\"") && err.contains("static"), "{err}");
    }

    #[test]
    fn endpoints_must_be_the_wan_address() {
        let mut net = seed();
        net.sites[2].endpoint = Some("198.51.100.9:51820".parse().unwrap());
        let err = LabPlan::new(&net).unwrap_err().to_string();
        assert!(
            err.contains("\"azure\"") && err.contains("198.51.100.3"),
            "{err}"
        );
    }
}
