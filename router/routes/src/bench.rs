//! The route benchmark: N routes over a dummy (or ifb) interface in a fresh network namespace (created
//! by `unshare`, gone when the benchmark ends): cold apply, second apply (dump + diff, no
//! changes), withdraw all. Needs root. `sitelink bench routes` prints it.

use std::fmt;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use ipnet::{IpNet, Ipv4Net};

use crate::desired::{Desired, DesiredLink, DesiredRoute, Target, TABLE_MAIN};
use crate::reconcile::{Options, Reconciler};
use crate::{netns, RoutesError};

/// Timings of one benchmark run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenchReport {
    pub routes: usize,
    /// The stand-in interface's kind ("dummy", or "ifb" where there is no dummy driver).
    pub link_kind: &'static str,
    /// First apply into an empty namespace (link up, address, all routes).
    pub cold_apply: Duration,
    pub cold_changes: usize,
    /// Second apply of the same state (must report 0 changes).
    pub second_apply: Duration,
    pub second_changes: usize,
    /// `withdraw_all`.
    pub withdraw: Duration,
    pub withdrawn: usize,
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        writeln!(f, "{:<14} {:>10} {:>9}", "step", "time (ms)", "changes")?;
        writeln!(
            f,
            "{:<14} {:>10.1} {:>9}",
            "cold apply",
            ms(self.cold_apply),
            self.cold_changes
        )?;
        writeln!(
            f,
            "{:<14} {:>10.1} {:>9}",
            "second apply",
            ms(self.second_apply),
            self.second_changes
        )?;
        writeln!(
            f,
            "{:<14} {:>10.1} {:>9}",
            "withdraw all",
            ms(self.withdraw),
            self.withdrawn
        )?;
        write!(
            f,
            "({} routes over one {} interface, in a fresh network namespace)",
            self.routes, self.link_kind
        )
    }
}

/// The i-th benchmark prefix: 10.0.0.0/24, 10.0.1.0/24, ... (up to 65536 of them).
fn prefix(i: usize) -> IpNet {
    let i = (i % 65536) as u32;
    let a = Ipv4Addr::from(0x0a00_0000u32 | (i << 8));
    IpNet::V4(Ipv4Net::new(a, 24).unwrap_or_default())
}

/// The desired state of the benchmark: `routes` routes over `bench0`.
pub fn bench_desired(routes: usize) -> Desired {
    Desired {
        links: vec![DesiredLink {
            name: "bench0".into(),
            mtu: 1420,
            addresses: vec!["10.255.0.0/31".parse().unwrap_or_default()],
        }],
        routes: (0..routes)
            .map(|i| DesiredRoute {
                table: TABLE_MAIN,
                prefix: prefix(i),
                metric: 100,
                target: Target::Dev("bench0".into()),
            })
            .collect(),
        rules: vec![],
        forwarding: false,
        warnings: vec![],
    }
}

/// Run the benchmark with `routes` routes (at most 65536). Needs root (CAP_SYS_ADMIN,
/// CAP_NET_ADMIN).
pub fn bench(routes: usize) -> Result<BenchReport, RoutesError> {
    if routes > 65536 {
        return Err(RoutesError::Invalid(format!(
            "{routes} routes requested; the benchmark generates at most 65536 distinct /24s"
        )));
    }
    netns::run_in_new(move || -> Result<BenchReport, RoutesError> {
        let mut opts = Options {
            manage_sysctls: false,
            ..Options::default()
        };
        opts.accepted_kinds.push("ifb".into());
        let mut rec = Reconciler::with_options(opts)?;
        let kind = rec.add_stand_in_link("bench0")?;
        let desired = bench_desired(routes);
        let t = Instant::now();
        let cold = rec.apply(&desired)?;
        let cold_apply = t.elapsed();
        if let Some(f) = cold.failures.first() {
            return Err(RoutesError::Invalid(format!(
                "cold apply: {} operations failed; first: {f}",
                cold.failures.len()
            )));
        }
        let t = Instant::now();
        let second = rec.apply(&desired)?;
        let second_apply = t.elapsed();
        let t = Instant::now();
        let w = rec.withdraw_all()?;
        let withdraw = t.elapsed();
        Ok(BenchReport {
            routes,
            link_kind: kind,
            cold_apply,
            cold_changes: cold.changes(),
            second_apply,
            second_changes: second.changes(),
            withdraw,
            withdrawn: w.changes(),
        })
    })?
}
