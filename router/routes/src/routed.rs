//! `routed`: reconcile + probe every tunnel until stopped, then withdraw everything we own.
//!
//! One thread, one loop: every tunnel has a UDP socket bound to its own tunnel address and
//! `probe.port`; it answers the peer's probes and sends ours to `peer_address:probe.port`.
//! A tunnel going down (probes, or a stale handshake) withdraws its routes at once; the
//! kernel then uses the backups. A full resync (dump + diff) also runs every `resync`.

use std::collections::BTreeSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use sitelink_config::site::{RouteKind, SiteConfig};

use crate::probe::{wire, HandshakeSource, ProbeMachine, ProbeParams};
use crate::reconcile::{ApplyReport, Options, Reconciler};
use crate::status::{PrefixStatus, Status, TunnelStatus};
use crate::{Desired, RoutesError};

/// How [`run_routed_with`] runs.
pub struct RoutedOptions {
    pub reconciler: Options,
    /// Handshake ages from the data plane; `None`: probes alone decide.
    pub handshakes: Option<Box<dyn HandshakeSource>>,
    /// Where to write the status (TOML) after every change, and at most once a second as probe
    /// RTTs change; `None`: nowhere.
    pub status_path: Option<PathBuf>,
    /// A shared in-memory copy of the status, updated after every change.
    pub status: Option<Arc<Mutex<Status>>>,
    /// Full resync (dump + diff + apply) period.
    pub resync: Duration,
    /// How long to wait at start for missing tunnel interfaces (the data plane creating them)
    /// before failing.
    pub wait_for_interfaces: Duration,
}

impl Default for RoutedOptions {
    fn default() -> Self {
        RoutedOptions {
            reconciler: Options::default(),
            handshakes: None,
            status_path: Some(PathBuf::from("/run/sitelink/routed.toml")),
            status: None,
            resync: Duration::from_secs(10),
            wait_for_interfaces: Duration::from_secs(10),
        }
    }
}

impl std::fmt::Debug for RoutedOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoutedOptions")
            .field("reconciler", &self.reconciler)
            .field("handshakes", &self.handshakes.is_some())
            .field("status_path", &self.status_path)
            .field("resync", &self.resync)
            .field("wait_for_interfaces", &self.wait_for_interfaces)
            .finish()
    }
}

/// A flag set by SIGTERM or SIGINT, for [`run_routed`]'s `stop`.
pub fn stop_on_signals() -> Result<Arc<AtomicBool>, RoutesError> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).map_err(|errno| {
            RoutesError::Netns {
                what: format!("install handler for signal {sig}"),
                errno,
            }
        })?;
    }
    Ok(stop)
}

/// Run the route installer with default options until `stop` is set (e.g. by
/// [`stop_on_signals`]), then remove our routes, rules and addresses.
pub fn run_routed(cfg: SiteConfig, stop: Arc<AtomicBool>) -> Result<(), RoutesError> {
    run_routed_with(cfg, RoutedOptions::default(), stop)
}

struct Tunnel {
    name: String,
    peer: Option<Ipv4Addr>,
    local: Option<Ipv4Addr>,
    sock: Option<UdpSocket>,
    machine: ProbeMachine,
    next_tick: Instant,
    reason: String,
    bind_error: Option<String>,
}

impl Tunnel {
    fn ensure_socket(&mut self, port: u16) {
        if self.sock.is_some() || self.peer.is_none() {
            return;
        }
        let Some(local) = self.local else { return };
        match UdpSocket::bind(SocketAddr::new(IpAddr::V4(local), port))
            .and_then(|s| s.set_nonblocking(true).map(|()| s))
        {
            Ok(s) => {
                log::debug!("probe socket for {} on {local}:{port}", self.name);
                self.sock = Some(s);
                self.bind_error = None;
            }
            Err(e) => {
                let msg = format!(
                    "cannot bind the probe socket of {} to {local}:{port}: {e}",
                    self.name
                );
                if self.bind_error.as_deref() != Some(msg.as_str()) {
                    log::warn!("{msg}");
                    self.bind_error = Some(msg);
                }
            }
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn build_status(cfg: &SiteConfig, tunnels: &[Tunnel], desired: &Desired, last: &str) -> Status {
    let active = desired.active_routes(cfg.route_table);
    let mut prefixes = Vec::new();
    let mut seen = BTreeSet::new();
    for r in &cfg.routes {
        let p = r.prefix.trunc();
        if !seen.insert(p) {
            continue;
        }
        let st = match active.get(&p) {
            Some((metric, crate::Target::Dev(via))) => {
                let kind = cfg
                    .routes
                    .iter()
                    .find(|x| x.prefix.trunc() == p && &x.via == via)
                    .map(|x| x.kind);
                PrefixStatus {
                    prefix: p,
                    via: Some(via.clone()),
                    metric: Some(*metric),
                    path: match kind {
                        Some(RouteKind::Direct) => "direct",
                        Some(RouteKind::Transit) => "transit",
                        None => "other",
                    }
                    .into(),
                }
            }
            _ => PrefixStatus {
                prefix: p,
                via: None,
                metric: None,
                path: "none".into(),
            },
        };
        prefixes.push(st);
    }
    Status {
        site: cfg.site.clone(),
        updated_unix: unix_now(),
        last_apply: last.to_owned(),
        tunnels: tunnels
            .iter()
            .map(|t| TunnelStatus {
                interface: t.name.clone(),
                state: t.machine.state(),
                routable: t.machine.routable(),
                rtt_us: t.machine.rtt().map(|d| d.as_micros() as u64),
                reason: t.reason.clone(),
            })
            .collect(),
        prefixes,
    }
}

/// Run the route installer until `stop` is set, then withdraw. Fails at start when a tunnel
/// interface is not ours, or is still missing after `wait_for_interfaces`; nothing is
/// changed in that case.
pub fn run_routed_with(
    cfg: SiteConfig,
    opts: RoutedOptions,
    stop: Arc<AtomicBool>,
) -> Result<(), RoutesError> {
    let mut rec = Reconciler::with_options(opts.reconciler.clone())?;
    let params = ProbeParams::from(&cfg.probe);
    let port = cfg.probe.port;
    let start = Instant::now();
    let mut tunnels: Vec<Tunnel> = cfg
        .interfaces
        .iter()
        .map(|i| Tunnel {
            name: i.name.clone(),
            peer: i.peer_address,
            local: i.addresses.iter().find_map(|a| match a.addr() {
                IpAddr::V4(v4) => Some(v4),
                IpAddr::V6(_) => None,
            }),
            sock: None,
            machine: ProbeMachine::new(params),
            next_tick: start,
            reason: if i.peer_address.is_some() {
                "starting".into()
            } else {
                "no peer_address: not probed".into()
            },
            bind_error: None,
        })
        .collect();
    let down_set = |tunnels: &[Tunnel]| -> BTreeSet<String> {
        tunnels
            .iter()
            .filter(|t| !t.machine.routable())
            .map(|t| t.name.clone())
            .collect()
    };

    // Initial apply, waiting (bounded) for the data plane to create the interfaces.
    let deadline = start + opts.wait_for_interfaces;
    let mut desired = Desired::from_site(&cfg, &BTreeSet::new())?;
    let mut last;
    loop {
        match rec.apply(&desired) {
            Ok(r) => {
                log_report("initial apply", &r, &mut BTreeSet::new());
                last = r.to_string();
                break;
            }
            Err(RoutesError::MissingInterface { name })
                if Instant::now() < deadline && !stop.load(Ordering::Relaxed) =>
            {
                log::debug!("waiting for interface {name}");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return Err(e),
        }
    }
    log::info!(
        "routed started for site {}: {} tunnels, {} routes, probes every {} ms on port {port}",
        cfg.site,
        tunnels.len(),
        cfg.routes.len(),
        params.interval.as_millis()
    );
    let publish = |s: Status| {
        if let Some(p) = &opts.status_path {
            if let Err(e) = s.write(p) {
                log::debug!("{e}");
            }
        }
        if let Some(shared) = &opts.status {
            if let Ok(mut g) = shared.lock() {
                *g = s;
            }
        }
    };
    let st = build_status(&cfg, &tunnels, &desired, &last);
    let mut prev_prefixes = st.prefixes.clone();
    publish(st);

    let mut next_resync = Instant::now() + opts.resync;
    // The status also follows the probes' RTTs, written at most once a second.
    let mut next_publish = Instant::now();
    let mut answered = false;
    let mut failures_logged = BTreeSet::new();
    let mut buf = [0u8; 64];
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let mut changed = false;
        for t in &mut tunnels {
            if let Some(h) = &opts.handshakes {
                if let Some(msg) = t.machine.handshake(h.handshake_age(&t.name)) {
                    log::info!("tunnel {}: {msg}", t.name);
                    t.reason = msg;
                    changed = true;
                }
            }
            let Some(peer) = t.peer else { continue };
            t.ensure_socket(port);
            if let Some(tr) = t.machine.check(now) {
                log::info!("tunnel {} {tr}", t.name);
                t.reason = tr.reason.clone();
                changed = true;
            }
            if now >= t.next_tick {
                let (seq, tr) = t.machine.tick(now);
                if let Some(sock) = &t.sock {
                    let _ = sock.send_to(
                        &wire::encode(wire::REQUEST, seq),
                        SocketAddr::new(IpAddr::V4(peer), port),
                    );
                }
                t.next_tick += params.interval;
                if t.next_tick < now {
                    t.next_tick = now + params.interval;
                }
                if let Some(tr) = tr {
                    log::info!("tunnel {} {tr}", t.name);
                    t.reason = tr.reason.clone();
                    changed = true;
                }
            }
        }

        // Wait for probe traffic until the next tick (at most 100 ms, to notice `stop`).
        let next = tunnels
            .iter()
            .filter(|t| t.peer.is_some())
            .flat_map(|t| [Some(t.next_tick), t.machine.deadline()])
            .flatten()
            .min()
            .unwrap_or(now + Duration::from_millis(100));
        let wait = next
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(100));
        let mut readable = vec![false; tunnels.len()];
        {
            let mut fds = Vec::new();
            let mut idx = Vec::new();
            for (i, t) in tunnels.iter().enumerate() {
                if let Some(s) = &t.sock {
                    fds.push(PollFd::new(s.as_fd(), PollFlags::POLLIN));
                    idx.push(i);
                }
            }
            if fds.is_empty() {
                std::thread::sleep(wait);
            } else {
                let ms = u16::try_from(wait.as_millis()).unwrap_or(100);
                if poll(&mut fds, PollTimeout::from(ms)).is_ok() {
                    for (fd, i) in fds.iter().zip(&idx) {
                        readable[*i] = fd.revents().is_some_and(|r| !r.is_empty());
                    }
                }
            }
        }
        for (t, r) in tunnels.iter_mut().zip(readable) {
            if !r {
                continue;
            }
            let mut drop_sock = false;
            if let Some(sock) = &t.sock {
                loop {
                    match sock.recv_from(&mut buf) {
                        Ok((n, from)) => match wire::decode(&buf[..n]) {
                            Some((wire::REQUEST, seq)) => {
                                t.machine.heard(Instant::now());
                                let _ = sock.send_to(&wire::encode(wire::REPLY, seq), from);
                            }
                            Some((wire::REPLY, seq)) => {
                                answered = true;
                                if let Some(tr) = t.machine.answer(seq, Instant::now()) {
                                    log::info!("tunnel {} {tr}", t.name);
                                    t.reason = tr.reason.clone();
                                    changed = true;
                                }
                            }
                            _ => {}
                        },
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        // ICMP errors (peer unreachable) surface here; the miss counts.
                        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
                        Err(e) => {
                            log::debug!("probe socket of {}: {e}; reopening", t.name);
                            drop_sock = true;
                            break;
                        }
                    }
                }
            }
            if drop_sock {
                t.sock = None;
            }
        }

        let now = Instant::now();
        if changed || now >= next_resync {
            next_resync = now + opts.resync;
            let down = down_set(&tunnels);
            match Desired::from_site(&cfg, &down) {
                Ok(d) => desired = d,
                Err(e) => log::error!("{e}"),
            }
            match rec.apply(&desired) {
                Ok(r) => {
                    if changed || r.changes() > 0 {
                        log_report("apply", &r, &mut failures_logged);
                    }
                    last = r.to_string();
                }
                Err(e) => {
                    let msg = e.to_string();
                    if failures_logged.insert(msg.clone()) {
                        log::error!("apply failed: {msg}");
                    }
                }
            }
            let st = build_status(&cfg, &tunnels, &desired, &last);
            log_failovers(&prev_prefixes, &st.prefixes);
            prev_prefixes = st.prefixes.clone();
            publish(st);
            next_publish = now + Duration::from_secs(1);
            answered = false;
        } else if answered && now >= next_publish {
            publish(build_status(&cfg, &tunnels, &desired, &last));
            next_publish = now + Duration::from_secs(1);
            answered = false;
        }
    }

    log::info!("routed stopping: withdrawing our routes, rules and addresses");
    let r = rec.withdraw_all()?;
    log_report("withdraw", &r, &mut BTreeSet::new());
    let mut s = build_status(&cfg, &tunnels, &Desired::default(), &r.to_string());
    s.prefixes.iter_mut().for_each(|p| {
        p.via = None;
        p.metric = None;
        p.path = "none".into();
    });
    publish(s);
    Ok(())
}

/// Log, at info, every prefix whose active route changed (failover and recovery).
fn log_failovers(before: &[PrefixStatus], after: &[PrefixStatus]) {
    for a in after {
        let b = before.iter().find(|b| b.prefix == a.prefix);
        if b.map(|b| (&b.via, b.metric)) == Some((&a.via, a.metric)) {
            continue;
        }
        let was = b
            .and_then(|b| b.via.clone())
            .unwrap_or_else(|| "nothing".into());
        match (&a.via, a.metric) {
            (Some(via), Some(m)) => log::info!(
                "route to {} now via {via} ({}, metric {m}; was {was})",
                a.prefix,
                a.path
            ),
            _ => log::info!("route to {}: no tunnel left (was {was})", a.prefix),
        }
    }
}

fn log_report(what: &str, r: &ApplyReport, logged: &mut BTreeSet<String>) {
    log::info!("{what}: {r}");
    for f in &r.failures {
        let msg = f.to_string();
        if logged.insert(msg.clone()) {
            log::warn!("{msg}");
        }
    }
}
