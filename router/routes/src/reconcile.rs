//! [`Reconciler`]: dump the kernel, diff against the desired state, apply the difference in
//! pipelined netlink batches. Applying the same state twice changes nothing.

use std::collections::BTreeSet;
use std::fmt;

use crate::desired::Desired;
use crate::diff::{self, KernelState, Op, PlanOptions};
use crate::netlink::Netlink;
use crate::{sysctl, RoutesError};

pub use crate::diff::Conflict;

/// How the reconciler behaves.
#[derive(Debug, Clone)]
pub struct Options {
    /// Link kinds (`IFLA_INFO_KIND`) accepted as tunnel interfaces. Anything else with a
    /// tunnel's name is "not ours" (R8). Default: tun (our data plane), wireguard (kernel
    /// WireGuard), dummy (tests, benchmark).
    pub accepted_kinds: Vec<String>,
    /// Write `ip_forward`, IPv6 forwarding and per-tunnel `rp_filter` sysctls.
    pub manage_sysctls: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            accepted_kinds: vec!["tun".into(), "wireguard".into(), "dummy".into()],
            manage_sysctls: true,
        }
    }
}

/// What one apply (or withdraw) did.
#[derive(Debug, Default)]
pub struct ApplyReport {
    pub links_changed: usize,
    pub addresses_added: usize,
    pub addresses_removed: usize,
    pub routes_added: usize,
    pub routes_replaced: usize,
    pub routes_removed: usize,
    pub rules_added: usize,
    pub rules_removed: usize,
    pub sysctls_changed: usize,
    /// Routes to our prefixes that another program installed (left alone).
    pub conflicts: Vec<Conflict>,
    /// IPv6 objects skipped because IPv6 is disabled.
    pub skipped_v6: usize,
    /// Operations that failed (the others were done), each naming the operation, the
    /// prefix or interface, and the errno text.
    pub failures: Vec<RoutesError>,
}

impl ApplyReport {
    /// Number of changes made to the kernel.
    pub fn changes(&self) -> usize {
        self.links_changed
            + self.addresses_added
            + self.addresses_removed
            + self.routes_added
            + self.routes_replaced
            + self.routes_removed
            + self.rules_added
            + self.rules_removed
            + self.sysctls_changed
    }

    /// Whether every operation succeeded.
    pub fn is_complete(&self) -> bool {
        self.failures.is_empty()
    }

    /// `Err(RoutesError::Partial)` (naming the first failed operation) if anything failed,
    /// for callers that treat a partial apply as an error.
    pub fn into_result(mut self) -> Result<ApplyReport, RoutesError> {
        if self.failures.is_empty() {
            return Ok(self);
        }
        let failed = self.failures.len();
        let total = self.changes() + failed;
        let first = self.failures.remove(0);
        Err(RoutesError::Partial {
            failed,
            total,
            first: Box::new(first),
        })
    }

    fn count(&mut self, op: &Op) {
        match op {
            Op::SetLink { .. } => self.links_changed += 1,
            Op::AddAddr { .. } => self.addresses_added += 1,
            Op::DelAddr { .. } => self.addresses_removed += 1,
            Op::AddRoute(_) => self.routes_added += 1,
            Op::ReplaceRoute(_) => self.routes_replaced += 1,
            Op::DelRoute(_) => self.routes_removed += 1,
            Op::AddRule(_) => self.rules_added += 1,
            Op::DelRule(_) => self.rules_removed += 1,
        }
    }
}

impl fmt::Display for ApplyReport {
    /// `N changes (routes +A ~R -D, addresses +A -D, links N, rules +A -D, sysctls N)`, then
    /// conflicts, skipped IPv6 and failures when there are any.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} changes (routes +{} ~{} -{}, addresses +{} -{}, links {}, rules +{} -{}, sysctls {})",
            self.changes(),
            self.routes_added,
            self.routes_replaced,
            self.routes_removed,
            self.addresses_added,
            self.addresses_removed,
            self.links_changed,
            self.rules_added,
            self.rules_removed,
            self.sysctls_changed
        )?;
        if !self.conflicts.is_empty() {
            write!(f, ", {} conflicts", self.conflicts.len())?;
        }
        if self.skipped_v6 > 0 {
            write!(
                f,
                ", {} IPv6 objects skipped (IPv6 disabled)",
                self.skipped_v6
            )?;
        }
        if !self.failures.is_empty() {
            write!(f, ", {} failed", self.failures.len())?;
        }
        Ok(())
    }
}

/// Keeps the kernel (of the namespace the reconciler was created in) in step with a
/// [`Desired`] state. Owns exactly the routes, rules and addresses marked with
/// [`RTPROT_SITELINK`](crate::RTPROT_SITELINK).
#[derive(Debug)]
pub struct Reconciler {
    nl: Netlink,
    opts: Options,
    /// Warnings already logged (each is logged once per reconciler).
    warned: BTreeSet<String>,
}

impl Reconciler {
    /// A reconciler with default [`Options`], in the calling thread's network namespace.
    pub fn new() -> Result<Reconciler, RoutesError> {
        Self::with_options(Options::default())
    }

    /// A reconciler with explicit options.
    pub fn with_options(opts: Options) -> Result<Reconciler, RoutesError> {
        Ok(Reconciler {
            nl: Netlink::open()?,
            opts,
            warned: BTreeSet::new(),
        })
    }

    fn warn_once(&mut self, msg: String) {
        if !self.warned.contains(&msg) {
            log::warn!("{msg}");
            self.warned.insert(msg);
        }
    }

    /// The kernel's links, addresses, routes (all tables) and rules.
    pub fn kernel_state(&mut self) -> Result<KernelState, RoutesError> {
        Ok(KernelState {
            links: self.nl.links()?,
            addrs: self.nl.addrs()?,
            routes: self.nl.routes()?,
            rules: self.nl.rules()?,
        })
    }

    /// Make the kernel match `desired` with the fewest operations. Fails before changing
    /// anything when a managed interface is missing or not a tunnel (R8); individual failed
    /// operations are in [`ApplyReport::failures`] and do not stop the others (R4).
    pub fn apply(&mut self, desired: &Desired) -> Result<ApplyReport, RoutesError> {
        for w in &desired.warnings {
            self.warn_once(w.clone());
        }
        let kernel = self.kernel_state()?;
        let v6_enabled = sysctl::v6_enabled();
        let opts = PlanOptions {
            accepted_kinds: self.opts.accepted_kinds.clone(),
            v6_enabled,
            v6_disabled_links: desired
                .links
                .iter()
                .filter(|l| v6_enabled && sysctl::v6_disabled_on(&l.name))
                .map(|l| l.name.clone())
                .collect(),
        };
        let plan = diff::plan(desired, &kernel, &opts)?;
        let mut report = ApplyReport {
            skipped_v6: plan.skipped_v6,
            ..Default::default()
        };
        if plan.skipped_v6 > 0 {
            let msg = if v6_enabled {
                format!(
                    "IPv6 is disabled on tunnel interface(s) {}: skipping their IPv6 routes and addresses; IPv4 is unaffected",
                    opts.v6_disabled_links.iter().cloned().collect::<Vec<_>>().join(", ")
                )
            } else {
                "IPv6 is disabled on this host (net.ipv6.conf.all.disable_ipv6=1 or no IPv6 stack): IPv6 routes, rules and tunnel addresses are skipped; IPv4 is unaffected".to_owned()
            };
            self.warn_once(msg);
        }
        for c in &plan.conflicts {
            self.warn_once(c.to_string());
        }
        report.conflicts = plan.conflicts.clone();

        if self.opts.manage_sysctls && desired.forwarding {
            let mut keys = vec![("net/ipv4/ip_forward".to_owned(), "1")];
            if v6_enabled && desired.uses_v6() {
                keys.push(("net/ipv6/conf/all/forwarding".to_owned(), "1"));
            }
            for l in &desired.links {
                keys.push((format!("net/ipv4/conf/{}/rp_filter", l.name), "2"));
            }
            for (k, v) in keys {
                match sysctl::ensure(&k, v) {
                    Ok(true) => report.sysctls_changed += 1,
                    Ok(false) => {}
                    Err(e) => report.failures.push(e),
                }
            }
        }
        self.run(&plan.ops, &mut report);
        Ok(report)
    }

    fn run(&mut self, ops: &[Op], report: &mut ApplyReport) {
        for op in ops {
            log::debug!("{op}");
        }
        for (op, res) in ops.iter().zip(self.nl.execute(ops)) {
            match res {
                Ok(()) => report.count(op),
                Err(e) => report.failures.push(e),
            }
        }
    }

    /// Remove every route, rule and address we own (shutdown), leaving everything else,
    /// including other programs' routes in the same tables, alone. Links stay up and
    /// sysctls stay as they are.
    pub fn withdraw_all(&mut self) -> Result<ApplyReport, RoutesError> {
        let kernel = self.kernel_state()?;
        let ops = diff::withdraw_plan(&kernel);
        let mut report = ApplyReport::default();
        self.run(&ops, &mut report);
        Ok(report)
    }

    /// `ip link add NAME type dummy`, or `type ifb` where the kernel has no dummy driver: a
    /// stand-in tunnel for the benchmark. Returns the kind created.
    pub fn add_stand_in_link(&mut self, name: &str) -> Result<&'static str, RoutesError> {
        use netlink_packet_route::link::InfoKind;
        match self.nl.add_link(name, InfoKind::Dummy) {
            Ok(()) => Ok("dummy"),
            Err(e) => {
                log::debug!("{e}; trying ifb");
                self.nl.add_link(name, InfoKind::Ifb).map(|()| "ifb")
            }
        }
    }
}
