//! One running WireGuard interface: its TUN, its UDP socket, its control socket, and the
//! threads that move packets (TUN -> encrypt -> UDP, UDP -> decrypt -> TUN) and run timers.
//!
//! Many devices can live in one process; each owns its threads and stops them on
//! [`Device::stop`].

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};

use crate::allowed_ips::AllowedIps;
use crate::offload;
use crate::state::{DeviceState, Host, Peer, StaticKeys};
use crate::sys;
use crate::uapi::{self, Request};

/// Default MTU of a new interface (WireGuard's usual 1420).
pub const DEFAULT_MTU: u32 = 1420;
/// Where `wg` looks for userspace interfaces.
pub const SOCKET_DIR: &str = "/var/run/wireguard";

const MAX_PACKET: usize = 65536;
const BATCH: usize = 64;
/// Load is measured in windows of this length (see [`LoadMeter`]).
const LOAD_WINDOW: Duration = Duration::from_millis(20);
/// More packets than this in one window: heavy load, two data threads (~5,000 packets/s).
const HEAVY_PER_WINDOW: usize = 100;
/// Default light-load busy-poll window after a sent packet, in microseconds.
const DEFAULT_BUSY_POLL_US: u64 = 50;
/// Fewer than this for `QUIET_WINDOWS` windows in a row: back to light load.
const LIGHT_PER_WINDOW: usize = 25;
const QUIET_WINDOWS: u32 = 10;
/// Receive batches up to this size count as light load (see `udp_to_tun`).
const LATENCY_BATCH: usize = 4;
const TICK: Duration = Duration::from_millis(100);

/// Why a device could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartDeviceError {
    /// The TUN could not be created.
    #[error("cannot create TUN interface {name}: {source}")]
    CreateTun {
        /// Interface name.
        name: String,
        /// OS error.
        #[source]
        source: io::Error,
    },
    /// The MTU could not be set.
    #[error("cannot set MTU {mtu} on {name}: {source}")]
    SetMtu {
        /// Interface name.
        name: String,
        /// MTU asked for.
        mtu: u32,
        /// OS error.
        #[source]
        source: io::Error,
    },
    /// The UDP socket could not be bound.
    #[error("cannot bind the UDP socket of {name}: {source}")]
    BindUdp {
        /// Interface name.
        name: String,
        /// OS error.
        #[source]
        source: io::Error,
    },
    /// The control socket could not be created.
    #[error("cannot serve control socket {path}: {source}")]
    ControlSocket {
        /// Socket path.
        path: PathBuf,
        /// OS error.
        #[source]
        source: io::Error,
    },
    /// Another process already serves this interface.
    #[error(
        "interface {name} is already served by another process (control socket {path} answers)"
    )]
    InUse {
        /// Interface name.
        name: String,
        /// Socket path.
        path: PathBuf,
    },
    /// A worker thread could not be spawned.
    #[error("cannot spawn a worker thread for {name}: {source}")]
    Spawn {
        /// Interface name.
        name: String,
        /// OS error.
        #[source]
        source: io::Error,
    },
}

/// Why a device stopped on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The TUN interface was deleted (`ip link del`).
    TunDeleted,
    /// The control socket file was removed.
    SocketRemoved,
    /// [`Device::stop`] was called.
    Requested,
}

/// What the data threads read without locks: a snapshot of the configuration, replaced as a
/// whole on every `set`.
struct Snapshot {
    keys: Option<StaticKeys>,
    rate_limiter: Arc<RateLimiter>,
    table: AllowedIps,
    by_id: HashMap<u32, Arc<Peer>>,
    by_key: HashMap<[u8; 32], Arc<Peer>>,
    sock: Arc<UdpSocket>,
    dual_stack: bool,
}

struct Shared {
    name: String,
    socket_path: PathBuf,
    tun: File,
    state: Mutex<DeviceState>,
    snapshot: Mutex<Arc<Snapshot>>,
    generation: AtomicU64,
    /// The current UDP socket (changed by `listen_port`).
    sock: Mutex<(Arc<UdpSocket>, bool)>,
    stop: AtomicBool,
    stop_reason: Mutex<Option<StopReason>>,
    mtu: AtomicU32,
    ipv6_warned: AtomicBool,
    /// Whether UDP GSO works on this socket (cleared on the first EIO/EINVAL).
    gso: AtomicBool,
    /// Whether TUN reads and writes carry a `virtio_net_hdr` (TSO/checksum offload on).
    vnet: bool,
    /// Heavy load: the TUN thread reads the TUN. Light load: the receive thread polls the TUN
    /// too and does everything itself (no cross-thread wake-ups, lowest latency).
    heavy: AtomicBool,
    /// The receive thread is in light mode and polling the TUN.
    udp_polls_tun: AtomicBool,
    mode_lock: Mutex<()>,
    mode_cv: Condvar,
}

/// A running interface.
#[derive(Debug)]
pub struct Device {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The parts of a device created before forking into the background: the TUN, the UDP socket
/// and the control socket. [`Prepared::start`] spawns the threads.
#[derive(Debug)]
pub struct Prepared {
    name: String,
    tun: File,
    vnet: bool,
    sock: UdpSocket,
    dual_stack: bool,
    listener: UnixListener,
    socket_path: PathBuf,
}

/// Binds the device's UDP socket: dual-stack `[::]:port`, or `0.0.0.0:port` when the host has
/// no IPv6 (D4). Returns the socket and whether it is dual-stack.
pub fn bind_udp(port: u16, fwmark: u32) -> io::Result<(UdpSocket, bool)> {
    let (sock, dual) = match UdpSocket::bind((Ipv6Addr::UNSPECIFIED, port)) {
        Ok(s) => (s, true),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EAFNOSUPPORT) | Some(libc::EADDRNOTAVAIL)
            ) =>
        {
            (UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port))?, false)
        }
        Err(e) => return Err(e),
    };
    sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    if let Err(e) = sys::enable_udp_gro(sock.as_raw_fd()) {
        log::debug!("UDP GRO not available: {e}");
    }
    sys::set_socket_buffers(sock.as_raw_fd(), 4 << 20);
    if fwmark != 0 {
        sys::set_fwmark(sock.as_raw_fd(), fwmark)?;
    }
    Ok((sock, dual))
}

/// The control socket path of interface `name`.
pub fn socket_path(name: &str) -> PathBuf {
    Path::new(SOCKET_DIR).join(format!("{name}.sock"))
}

impl Prepared {
    /// Creates TUN `name` (MTU 1420), binds a random UDP port and the control socket.
    pub fn new(name: &str) -> Result<Prepared, StartDeviceError> {
        let path = socket_path(name);
        if UnixStream::connect(&path).is_ok() {
            return Err(StartDeviceError::InUse {
                name: name.into(),
                path,
            });
        }
        let want_offload = std::env::var_os("SITELINK_WG_NO_OFFLOAD").is_none();
        let (tun, vnet) =
            sys::tun_create(name, want_offload).map_err(|source| StartDeviceError::CreateTun {
                name: name.into(),
                source,
            })?;
        sys::set_mtu(name, DEFAULT_MTU).map_err(|source| StartDeviceError::SetMtu {
            name: name.into(),
            mtu: DEFAULT_MTU,
            source,
        })?;
        let (sock, dual_stack) = bind_udp(0, 0).map_err(|source| StartDeviceError::BindUdp {
            name: name.into(),
            source,
        })?;
        let ctl = |source| StartDeviceError::ControlSocket {
            path: path.clone(),
            source,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(SOCKET_DIR)
            .map_err(ctl)?;
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(ctl(e)),
        }
        let listener = UnixListener::bind(&path).map_err(ctl)?;
        Ok(Prepared {
            name: name.into(),
            tun,
            vnet,
            sock,
            dual_stack,
            listener,
            socket_path: path,
        })
    }

    /// Spawns the data, timer and control threads.
    pub fn start(self) -> Result<Device, StartDeviceError> {
        let Prepared {
            name,
            tun,
            vnet,
            sock,
            dual_stack,
            listener,
            socket_path,
        } = self;
        if !dual_stack {
            log::warn!("{name}: IPv6 is not available on this host; running IPv4-only");
        }
        let mut state = DeviceState::new();
        state.set_bound_port(sock.local_addr().map(|a| a.port()).unwrap_or(0));
        let sock = Arc::new(sock);
        let snapshot = build_snapshot(&state, sock.clone(), dual_stack);
        let shared = Arc::new(Shared {
            name: name.clone(),
            socket_path,
            tun,
            state: Mutex::new(state),
            snapshot: Mutex::new(Arc::new(snapshot)),
            generation: AtomicU64::new(1),
            sock: Mutex::new((sock, dual_stack)),
            stop: AtomicBool::new(false),
            stop_reason: Mutex::new(None),
            mtu: AtomicU32::new(DEFAULT_MTU),
            ipv6_warned: AtomicBool::new(!dual_stack),
            gso: AtomicBool::new(std::env::var_os("SITELINK_WG_NO_GSO").is_none()),
            vnet,
            heavy: AtomicBool::new(false),
            udp_polls_tun: AtomicBool::new(false),
            mode_lock: Mutex::new(()),
            mode_cv: Condvar::new(),
        });
        sys::set_nonblocking(shared.tun.as_raw_fd()).map_err(|source| {
            StartDeviceError::CreateTun {
                name: name.clone(),
                source,
            }
        })?;
        let mut threads = Vec::new();
        let spawn = |label: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(format!("{name}-{label}"))
                .spawn(f)
                .map_err(|source| StartDeviceError::Spawn {
                    name: name.clone(),
                    source,
                })
        };
        let s = shared.clone();
        threads.push(spawn("tun", Box::new(move || tun_to_udp(&s)))?);
        let s = shared.clone();
        threads.push(spawn("udp", Box::new(move || udp_to_tun(&s)))?);
        let s = shared.clone();
        threads.push(spawn("timers", Box::new(move || timers(&s)))?);
        let s = shared.clone();
        threads.push(spawn("uapi", Box::new(move || serve_uapi(&s, listener)))?);
        log::info!("{name}: up");
        Ok(Device { shared, threads })
    }
}

impl Device {
    /// Creates and starts interface `name` (see [`Prepared::new`]).
    pub fn start(name: &str) -> Result<Device, StartDeviceError> {
        Prepared::new(name)?.start()
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Why the device stopped on its own, if it did.
    pub fn stopped(&self) -> Option<StopReason> {
        *lock(&self.shared.stop_reason)
    }

    /// Stops the threads and removes the control socket. The TUN disappears when the last
    /// descriptor closes (when this value and its threads are gone).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        request_stop(&self.shared, StopReason::Requested);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        remove_socket_if_ours(&self.shared);
        log::info!("{}: down", self.shared.name);
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.shutdown();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn request_stop(shared: &Shared, reason: StopReason) {
    let mut r = lock(&shared.stop_reason);
    if r.is_none() {
        *r = Some(reason);
    }
    shared.stop.store(true, Ordering::SeqCst);
    let _guard = lock(&shared.mode_lock);
    shared.mode_cv.notify_all();
}

fn remove_socket_if_ours(shared: &Shared) {
    // Only remove the socket file if it is still a socket (not replaced by someone else's).
    if let Ok(meta) = std::fs::symlink_metadata(&shared.socket_path) {
        use std::os::unix::fs::FileTypeExt;
        if meta.file_type().is_socket() {
            let _ = std::fs::remove_file(&shared.socket_path);
        }
    }
}

fn build_snapshot(state: &DeviceState, sock: Arc<UdpSocket>, dual_stack: bool) -> Snapshot {
    let by_id: HashMap<u32, Arc<Peer>> = state
        .peers()
        .iter()
        .map(|(id, p)| (*id, p.clone()))
        .collect();
    let by_key = by_id
        .values()
        .map(|p| (p.public_key.0, p.clone()))
        .collect();
    Snapshot {
        keys: state.keys().cloned(),
        rate_limiter: state.rate_limiter().clone(),
        table: state.table().clone(),
        by_id,
        by_key,
        sock,
        dual_stack,
    }
}

fn publish(shared: &Shared, state: &DeviceState) {
    let (sock, dual) = lock(&shared.sock).clone();
    let snap = Arc::new(build_snapshot(state, sock, dual));
    *lock(&shared.snapshot) = snap;
    shared.generation.fetch_add(1, Ordering::Release);
}

/// A thread's cached view of the snapshot, refreshed when the generation changes.
struct View {
    generation: u64,
    snap: Arc<Snapshot>,
}

impl View {
    fn new(shared: &Shared) -> View {
        View {
            generation: shared.generation.load(Ordering::Acquire),
            snap: lock(&shared.snapshot).clone(),
        }
    }

    fn refresh(&mut self, shared: &Shared) {
        let g = shared.generation.load(Ordering::Acquire);
        if g != self.generation {
            self.generation = g;
            self.snap = lock(&shared.snapshot).clone();
        }
    }
}

/// IPv4-mapped IPv6 source addresses (from the dual-stack socket) as plain IPv4.
fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), a.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

/// The destination as the socket needs it: IPv4 mapped into IPv6 on a dual-stack socket.
fn wire_addr(addr: SocketAddr, dual_stack: bool) -> Option<SocketAddr> {
    match (addr, dual_stack) {
        (SocketAddr::V4(a), true) => Some(SocketAddr::V6(SocketAddrV6::new(
            a.ip().to_ipv6_mapped(),
            a.port(),
            0,
            0,
        ))),
        (SocketAddr::V6(_), false) => None,
        _ => Some(addr),
    }
}

fn send_one(snap: &Snapshot, shared: &Shared, data: &[u8], to: SocketAddr) {
    match wire_addr(to, snap.dual_stack) {
        Some(addr) => {
            if let Err(e) = snap.sock.send_to(data, addr) {
                log::debug!("{}: send to {to}: {e}", shared.name);
            }
        }
        None => {
            if !shared.ipv6_warned.swap(true, Ordering::Relaxed) {
                log::warn!(
                    "{}: cannot send to IPv6 endpoint {to}: no IPv6 on this host",
                    shared.name
                );
            }
        }
    }
}

/// TUN -> encrypt -> UDP, in batches: read every queued packet from the TUN, encrypt each with
/// its peer's session, send them all with one `sendmmsg`.
fn tun_to_udp(shared: &Shared) {
    let fd = shared.tun.as_raw_fd();
    let mut view = View::new(shared);
    let mut tx = TxBatch::new();
    let mut meter = LoadMeter::new();
    let mut quiet = 0;
    while !shared.stop.load(Ordering::Relaxed) {
        if !shared.heavy.load(Ordering::Acquire) && shared.udp_polls_tun.load(Ordering::Acquire) {
            // Light load and the receive thread has the TUN: sleep until heavy load.
            let guard = lock(&shared.mode_lock);
            let _ = shared
                .mode_cv
                .wait_timeout_while(guard, Duration::from_secs(1), |_| {
                    !shared.heavy.load(Ordering::Acquire) && !shared.stop.load(Ordering::Relaxed)
                });
            quiet = 0;
            continue;
        }
        match sys::poll_readable(fd, Duration::from_millis(50)) {
            Ok(true) => {}
            Ok(false) => {
                if let Some(count) = meter.add(0) {
                    quiet = note_quiet(shared, count, quiet);
                }
                continue;
            }
            Err(e) => {
                log::error!("{}: poll on TUN: {e}", shared.name);
                std::thread::sleep(TICK);
                continue;
            }
        }
        view.refresh(shared);
        let snap = view.snap.clone();
        let (sent, err) = tx.drain(shared, &snap, BATCH);
        if let Some(count) = meter.add(sent) {
            quiet = note_quiet(shared, count, quiet);
        }
        if let Some(e) = err {
            if e.raw_os_error() == Some(libc::EBADFD) {
                request_stop(shared, StopReason::TunDeleted);
                return;
            }
            log::debug!("{}: TUN read: {e}", shared.name);
        }
    }
}

/// Counts quiet load windows on the TUN thread; after enough of them, hands the TUN back to
/// the receive thread (light mode). Returns the new count.
fn note_quiet(shared: &Shared, count: usize, quiet: u32) -> u32 {
    if count >= LIGHT_PER_WINDOW {
        return 0;
    }
    if quiet + 1 >= QUIET_WINDOWS && shared.heavy.swap(false, Ordering::AcqRel) {
        log::debug!("{}: light load: one data thread", shared.name);
    }
    quiet + 1
}

/// Packets per [`LOAD_WINDOW`].
struct LoadMeter {
    start: Instant,
    count: usize,
}

impl LoadMeter {
    fn new() -> LoadMeter {
        LoadMeter {
            start: Instant::now(),
            count: 0,
        }
    }

    /// Adds `n` packets; when the window is over, returns its count and starts a new one.
    fn add(&mut self, n: usize) -> Option<usize> {
        self.count += n;
        if self.start.elapsed() < LOAD_WINDOW {
            return None;
        }
        let c = self.count;
        self.count = 0;
        self.start = Instant::now();
        Some(c)
    }
}

/// Buffers for reading a batch of packets from the TUN and sending them encrypted.
struct TxBatch {
    inbuf: Vec<u8>,
    scratch: Vec<u8>,
    out: TxOut,
}

/// Encrypted datagrams waiting for one `sendmmsg`.
struct TxOut {
    bufs: Vec<Vec<u8>>,
    meta: Vec<(usize, SocketAddr)>,
    /// Datagrams queued since the last `drain` started.
    pushed: usize,
}

impl TxOut {
    /// Encrypts one plain IP packet for the peer that owns its destination and queues it,
    /// sending the queue first when it is full.
    fn push(&mut self, shared: &Shared, snap: &Snapshot, pkt: &[u8]) {
        let Some(dst) = Tunn::dst_address(pkt) else {
            return;
        };
        let Some(peer) = snap.table.lookup(dst).and_then(|id| snap.by_id.get(&id)) else {
            return;
        };
        if self.meta.len() == self.bufs.len() {
            flush(snap, shared, &self.bufs, &self.meta);
            self.meta.clear();
        }
        let slot = self.meta.len();
        let mut inner = peer.lock();
        let Some(endpoint) = inner.endpoint else {
            return;
        };
        let Some(tunn) = inner.tunn.as_mut() else {
            return;
        };
        if let TunnResult::WriteToNetwork(p) = tunn.encapsulate(pkt, &mut self.bufs[slot]) {
            let len = p.len();
            inner.last_tx = Instant::now();
            drop(inner);
            peer.tx_bytes.fetch_add(len as u64, Ordering::Relaxed);
            self.meta.push((len, endpoint));
            self.pushed += 1;
        }
    }
}

impl TxBatch {
    fn new() -> TxBatch {
        TxBatch {
            inbuf: vec![0u8; MAX_PACKET + offload::VNET_HDR_LEN],
            scratch: Vec::with_capacity(MAX_PACKET),
            out: TxOut {
                bufs: (0..BATCH).map(|_| vec![0u8; MAX_PACKET + 32]).collect(),
                meta: Vec::with_capacity(BATCH),
                pushed: 0,
            },
        }
    }

    /// Reads the packets queued on the (non-blocking) TUN, up to `max_reads`, cuts TSO
    /// super-packets into segments, encrypts each with its peer's session and sends them with
    /// as few `sendmmsg` calls as possible. Returns the number of datagrams sent and a read
    /// error other than "would block".
    ///
    /// Light load reads one packet per call: the read that would only say "would block" sits
    /// on the round-trip path of every ping, and the caller's next `poll` finds any packet
    /// left behind.
    fn drain(
        &mut self,
        shared: &Shared,
        snap: &Snapshot,
        max_reads: usize,
    ) -> (usize, Option<io::Error>) {
        let TxBatch {
            inbuf,
            scratch,
            out,
        } = self;
        out.meta.clear();
        out.pushed = 0;
        let mut read_err = None;
        for _ in 0..max_reads {
            let n = match (&shared.tun).read(inbuf) {
                Ok(n) => n,
                Err(e) => {
                    if e.kind() != io::ErrorKind::WouldBlock {
                        read_err = Some(e);
                    }
                    break;
                }
            };
            if !shared.vnet {
                out.push(shared, snap, &inbuf[..n]);
                continue;
            }
            let Some(hdr) = offload::VnetHdr::parse(&inbuf[..n]) else {
                continue;
            };
            let pkt = &mut inbuf[offload::VNET_HDR_LEN..n];
            if let Err(e) = offload::split(&hdr, pkt, scratch, |seg| out.push(shared, snap, seg)) {
                log::debug!("{}: dropped offloaded packet: {e}", shared.name);
            }
        }
        flush(snap, shared, &out.bufs, &out.meta);
        out.meta.clear();
        (out.pushed, read_err)
    }
}

fn flush(snap: &Snapshot, shared: &Shared, bufs: &[Vec<u8>], meta: &[(usize, SocketAddr)]) {
    if meta.is_empty() {
        return;
    }
    let packets: Vec<(&[u8], SocketAddr)> = meta
        .iter()
        .zip(bufs)
        .filter_map(|(&(len, to), buf)| wire_addr(to, snap.dual_stack).map(|a| (&buf[..len], a)))
        .collect();
    if let [(data, to)] = packets[..] {
        // One datagram (light load): a plain sendto, no batch to build.
        if let Err(e) = snap.sock.send_to(data, to) {
            log::debug!("{}: send to {to}: {e}", shared.name);
        }
        return;
    }
    let fd = snap.sock.as_raw_fd();
    let sent = if shared.gso.load(Ordering::Relaxed) {
        match sys::send_batch_gso(fd, &packets) {
            Ok(sent) => sent,
            Err((from, e)) => {
                log::warn!(
                    "{}: UDP GSO unavailable ({e}); sending datagrams one by one",
                    shared.name
                );
                shared.gso.store(false, Ordering::Relaxed);
                from + sys::send_batch(fd, &packets[from..])
            }
        }
    } else {
        sys::send_batch(fd, &packets)
    };
    if sent < packets.len() {
        log::debug!(
            "{}: sent {sent} of {} datagrams",
            shared.name,
            packets.len()
        );
    }
}

const MSG_INIT: u8 = 1;
const MSG_RESPONSE: u8 = 2;
const MSG_COOKIE: u8 = 3;
const MSG_DATA: u8 = 4;

/// UDP -> decrypt -> TUN, in batches of `recvmmsg`.
fn udp_to_tun(shared: &Shared) {
    let mut view = View::new(shared);
    let mut bufs: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0u8; MAX_PACKET]).collect();
    let mut meta = vec![sys::RecvMeta::default(); BATCH];
    let mut out = vec![0u8; MAX_PACKET];
    let mut replies: Vec<(Vec<u8>, SocketAddr)> = Vec::new();
    let mut tx = TxBatch::new();
    let mut meter = LoadMeter::new();
    let mut gro = offload::Coalescer::default();
    // Light-load busy poll (like the kernel's `net.core.busy_poll`): right after this thread
    // sent a packet, poll without sleeping for up to this long, because the answer usually
    // comes back within tens of microseconds and waking a halted CPU costs about as much (on
    // this project's VMs, where the idle loop does not halt-poll, it is most of a ping's
    // round trip). Heavy load never spins; an idle interface never spins.
    // `SITELINK_WG_BUSY_POLL_US=0` turns it off.
    let spin = Duration::from_micros(match std::env::var("SITELINK_WG_BUSY_POLL_US") {
        Err(_) => DEFAULT_BUSY_POLL_US,
        Ok(v) => v.parse().unwrap_or_else(|_| {
            log::warn!(
                "SITELINK_WG_BUSY_POLL_US={v:?} is not a number of microseconds (0 turns the busy poll off); using {DEFAULT_BUSY_POLL_US}"
            );
            DEFAULT_BUSY_POLL_US
        }),
    });
    let mut active = false;
    while !shared.stop.load(Ordering::Relaxed) {
        let mut wrote_tun = false;
        view.refresh(shared);
        let snap = view.snap.clone();
        let mut light_sent = 0;
        if !shared.heavy.load(Ordering::Acquire) {
            // Light load: this thread serves the TUN as well.
            shared.udp_polls_tun.store(true, Ordering::Release);
            let (ufd, tfd) = (snap.sock.as_raw_fd(), shared.tun.as_raw_fd());
            let mut polled = Ok((false, false));
            if active && !spin.is_zero() {
                let t0 = Instant::now();
                loop {
                    polled = sys::poll_readable2(ufd, tfd, Duration::ZERO);
                    if !matches!(polled, Ok((false, false))) || t0.elapsed() >= spin {
                        break;
                    }
                    std::hint::spin_loop();
                }
            }
            if matches!(polled, Ok((false, false))) {
                polled = sys::poll_readable2(ufd, tfd, Duration::from_millis(200));
            }
            let (udp_ready, tun_ready) = polled.unwrap_or((false, false));
            if tun_ready {
                light_sent = tx.drain(shared, &snap, 1).0;
            }
            active = light_sent > 0;
            if !udp_ready {
                if let Some(count) = meter.add(light_sent) {
                    go_heavy_if_busy(shared, count);
                }
                continue;
            }
        } else {
            shared.udp_polls_tun.store(false, Ordering::Release);
        }
        // Light load: one message per `poll` (a batch would try once more and find nothing);
        // heavy load: the full batch.
        let want = if shared.heavy.load(Ordering::Relaxed) {
            BATCH
        } else {
            1
        };
        let n = match sys::recv_batch(snap.sock.as_raw_fd(), &mut bufs[..want], &mut meta[..want]) {
            Ok(n) => n,
            Err(e) => {
                if !matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) {
                    log::debug!("{}: recvmmsg: {e}", shared.name);
                    std::thread::sleep(Duration::from_millis(10));
                }
                continue;
            }
        };
        active = true;
        let mut datagrams = 0;
        for i in 0..n {
            let m = meta[i];
            let Some(src) = m.addr.map(canonical) else {
                continue;
            };
            let mut to_tun = |pkt: &[u8]| {
                wrote_tun = true;
                if !shared.vnet {
                    tun_write(shared, pkt);
                    return;
                }
                // Coalesce in-order TCP segments into one super-packet (userspace GRO).
                if gro.offer(pkt) {
                    return;
                }
                if let Some(chain) = gro.flush() {
                    tun_write(shared, chain);
                }
                if gro.offer(pkt) {
                    return;
                }
                // Not coalescable: no offload, an all-zero virtio_net_hdr first.
                let hdr = [0u8; offload::VNET_HDR_LEN];
                let res =
                    (&shared.tun).write_vectored(&[io::IoSlice::new(&hdr), io::IoSlice::new(pkt)]);
                if let Err(e) = res {
                    log::debug!("{}: TUN write: {e}", shared.name);
                }
            };
            // A UDP GRO message holds several datagrams of `gso_size` bytes (the last may be
            // shorter).
            let seg = m.gso_size.unwrap_or(m.len).max(1);
            for chunk in bufs[i][..m.len].chunks(seg) {
                datagrams += 1;
                handle_datagram(
                    &shared.name,
                    &snap,
                    chunk,
                    src,
                    &mut out,
                    &mut replies,
                    &mut to_tun,
                );
            }
        }
        if let Some(chain) = gro.flush() {
            tun_write(shared, chain);
        }
        for (data, to) in replies.drain(..) {
            send_one(&snap, shared, &data, to);
        }
        let mut answered = 0;
        if wrote_tun && (datagrams <= LATENCY_BATCH || !shared.heavy.load(Ordering::Relaxed)) {
            // A light load: what we just wrote often produces an immediate answer from the
            // kernel (an ICMP echo reply, a TCP ACK). Take it here instead of waking the TUN
            // thread: one thread wake-up less per request/response round trip. Under bulk load
            // (full batches) the TUN thread does this work, so the two threads do not fight
            // over the peer lock.
            let reads = if shared.heavy.load(Ordering::Relaxed) {
                BATCH
            } else {
                1
            };
            answered = tx.drain(shared, &snap, reads).0;
        }
        if !shared.heavy.load(Ordering::Relaxed) {
            if let Some(count) = meter.add(light_sent + datagrams + answered) {
                go_heavy_if_busy(shared, count);
            }
        }
    }
}

fn tun_write(shared: &Shared, pkt: &[u8]) {
    if let Err(e) = (&shared.tun).write(pkt) {
        log::debug!("{}: TUN write: {e}", shared.name);
    }
}

/// On the receive thread in light mode: when a load window was busy, wake the TUN thread so
/// both cores work.
fn go_heavy_if_busy(shared: &Shared, count: usize) {
    if count > HEAVY_PER_WINDOW {
        let _guard = lock(&shared.mode_lock);
        shared.udp_polls_tun.store(false, Ordering::Release);
        shared.heavy.store(true, Ordering::Release);
        shared.mode_cv.notify_all();
        log::debug!("{}: heavy load: two data threads", shared.name);
    }
}

/// What the receive path produced for one datagram: packets for the TUN, datagrams to send.
pub type Received = (Vec<Vec<u8>>, Vec<(Vec<u8>, SocketAddr)>);

/// Feeds one UDP datagram from `src` through the receive path of a device configured as
/// `state`, without a TUN: returns the packets that would be written to the TUN and the
/// datagrams that would be sent. For the `packet` fuzz target and tests.
pub fn receive_datagram(
    state: &DeviceState,
    sock: Arc<UdpSocket>,
    datagram: &[u8],
    src: SocketAddr,
) -> Received {
    let snap = build_snapshot(state, sock, true);
    let mut out = vec![0u8; MAX_PACKET];
    let mut replies = Vec::new();
    let mut tun = Vec::new();
    let mut to_tun = |p: &[u8]| tun.push(p.to_vec());
    handle_datagram(
        "test",
        &snap,
        datagram,
        canonical(src),
        &mut out,
        &mut replies,
        &mut to_tun,
    );
    (tun, replies)
}

fn handle_datagram(
    name: &str,
    snap: &Snapshot,
    datagram: &[u8],
    src: SocketAddr,
    out: &mut [u8],
    replies: &mut Vec<(Vec<u8>, SocketAddr)>,
    to_tun_write: &mut dyn FnMut(&[u8]),
) {
    let Some(keys) = &snap.keys else { return };
    let Some(&kind) = datagram.first() else {
        return;
    };
    let peer = match snap
        .rate_limiter
        .verify_packet(Some(src.ip()), datagram, out)
    {
        Ok(Packet::HandshakeInit(p)) => {
            match parse_handshake_anon(&keys.secret, &keys.public, &p) {
                Ok(half) => snap.by_key.get(&half.peer_static_public),
                Err(_) => return,
            }
        }
        Ok(Packet::HandshakeResponse(p)) => snap.by_id.get(&(p.receiver_idx >> 8)),
        Ok(Packet::PacketCookieReply(p)) => snap.by_id.get(&(p.receiver_idx >> 8)),
        Ok(Packet::PacketData(p)) => snap.by_id.get(&(p.receiver_idx >> 8)),
        Err(TunnResult::WriteToNetwork(cookie)) => {
            // Under load: answer with a cookie reply, do not touch any peer (D5).
            replies.push((cookie.to_vec(), src));
            return;
        }
        Err(_) => return,
    };
    let Some(peer) = peer else { return };
    let mut inner = peer.lock();
    let Some(tunn) = inner.tunn.as_mut() else {
        return;
    };
    let result = tunn.decapsulate(Some(src.ip()), datagram, out);
    let authenticated;
    let mut to_tun: Option<(usize, IpAddr)> = None;
    let mut reply: Option<Vec<u8>> = None;
    match result {
        TunnResult::WriteToTunnelV4(p, a) => {
            authenticated = true;
            to_tun = Some((p.len(), IpAddr::V4(a)));
        }
        TunnResult::WriteToTunnelV6(p, a) => {
            authenticated = true;
            to_tun = Some((p.len(), IpAddr::V6(a)));
        }
        TunnResult::WriteToNetwork(p) => {
            if p.first() == Some(&MSG_COOKIE) {
                // A cookie reply we generate proves nothing about the sender.
                replies.push((p.to_vec(), src));
                return;
            }
            authenticated = matches!(kind, MSG_INIT | MSG_RESPONSE);
            reply = Some(p.to_vec());
        }
        // A valid keepalive decrypts to nothing; a cookie reply authenticates nothing (D3).
        TunnResult::Done => authenticated = kind == MSG_DATA,
        TunnResult::Err(e) => {
            log::trace!("{}: dropped datagram from {src}: {e:?}", name);
            return;
        }
    }
    if !authenticated {
        return;
    }
    peer.rx_bytes
        .fetch_add(datagram.len() as u64, Ordering::Relaxed);
    if inner.endpoint != Some(src) {
        log::info!(
            "{}: peer {} endpoint now {src}",
            name,
            short_key(&peer.public_key.0)
        );
        inner.endpoint = Some(src);
    }
    if let Some(r) = reply {
        peer.tx_bytes.fetch_add(r.len() as u64, Ordering::Relaxed);
        replies.push((r, src));
        inner.last_tx = Instant::now();
        // Packets queued while the handshake was in flight go out now.
        if let Some(tunn) = inner.tunn.as_mut() {
            let mut buf = vec![0u8; MAX_PACKET];
            while let TunnResult::WriteToNetwork(p) = tunn.decapsulate(None, &[], &mut buf) {
                peer.tx_bytes.fetch_add(p.len() as u64, Ordering::Relaxed);
                replies.push((p.to_vec(), src));
            }
        }
    }
    drop(inner);
    if let Some((len, inner_src)) = to_tun {
        // The decrypted packet's source must be one of this peer's allowed IPs.
        if snap.table.lookup(inner_src) != Some(peer.id) {
            log::debug!(
                "{}: dropped packet from {inner_src}: not an allowed IP of its peer",
                name
            );
            return;
        }
        to_tun_write(&out[..len]);
    }
}

/// A short, non-secret tag for a public key in logs.
fn short_key(k: &[u8; 32]) -> String {
    k[..4].iter().map(|b| format!("{b:02x}")).collect()
}

/// Timers: handshake retries, rekeys, keepalives, cookie-rate resets; and the watch on the TUN
/// and the control socket.
fn timers(shared: &Shared) {
    let mut view = View::new(shared);
    let mut buf = vec![0u8; MAX_PACKET];
    let mut last_reset = Instant::now();
    let sock_ino = std::fs::metadata(&shared.socket_path).map(|m| m.ino()).ok();
    let sys_path = PathBuf::from(format!("/sys/class/net/{}", shared.name));
    let mut delayed: Vec<(Instant, Vec<u8>, SocketAddr, Arc<Peer>)> = Vec::new();
    while !shared.stop.load(Ordering::Relaxed) {
        std::thread::sleep(TICK);
        view.refresh(shared);
        let snap = view.snap.clone();
        if last_reset.elapsed() >= Duration::from_secs(1) {
            snap.rate_limiter.reset_count();
            last_reset = Instant::now();
            if let Ok(mtu) = sys::get_mtu(&shared.name) {
                if shared.mtu.swap(mtu, Ordering::Relaxed) != mtu {
                    log::info!("{}: MTU is now {mtu}", shared.name);
                }
            }
        }
        let mut sends: Vec<(Vec<u8>, SocketAddr)> = Vec::new();
        let now = Instant::now();
        delayed.retain(|(due, p, ep, peer)| {
            if *due > now {
                return true;
            }
            peer.tx_bytes.fetch_add(p.len() as u64, Ordering::Relaxed);
            sends.push((p.clone(), *ep));
            false
        });
        for peer in snap.by_id.values() {
            let mut inner = peer.lock();
            let endpoint = inner.endpoint;
            let keepalive = inner.keepalive;
            let due = keepalive > 0
                && inner.last_tx.elapsed() >= Duration::from_secs(u64::from(keepalive));
            let Some(tunn) = inner.tunn.as_mut() else {
                continue;
            };
            let mut out = Vec::new();
            match tunn.update_timers(&mut buf) {
                // Handshake retries and rekeys go out after a random 0-333 ms, as the protocol
                // asks, so peers that lost contact together do not retry in lock step.
                TunnResult::WriteToNetwork(p) if p.first() == Some(&MSG_INIT) => {
                    if let Some(ep) = endpoint {
                        delayed.push((Instant::now() + jitter(), p.to_vec(), ep, peer.clone()));
                    }
                }
                TunnResult::WriteToNetwork(p) => out.push(p.to_vec()),
                TunnResult::Err(e) => log::trace!("{}: timers: {e:?}", shared.name),
                _ => {}
            }
            if due {
                if let TunnResult::WriteToNetwork(p) = tunn.encapsulate(&[], &mut buf) {
                    out.push(p.to_vec());
                }
            }
            if !out.is_empty() {
                inner.last_tx = Instant::now();
            }
            drop(inner);
            if let Some(ep) = endpoint {
                for p in out {
                    peer.tx_bytes.fetch_add(p.len() as u64, Ordering::Relaxed);
                    sends.push((p, ep));
                }
            }
        }
        for (p, to) in sends {
            send_one(&snap, shared, &p, to);
        }
        if !sys_path.exists() {
            log::info!("{}: TUN interface deleted, stopping", shared.name);
            request_stop(shared, StopReason::TunDeleted);
        }
        let ino = std::fs::metadata(&shared.socket_path).map(|m| m.ino()).ok();
        if ino.is_none() || ino != sock_ino {
            log::info!(
                "{}: control socket {} removed, stopping",
                shared.name,
                shared.socket_path.display()
            );
            request_stop(shared, StopReason::SocketRemoved);
        }
    }
}

/// A random delay of 0-333 ms (handshake retry jitter).
fn jitter() -> Duration {
    use rand_core::RngCore;
    Duration::from_millis(u64::from(rand_core::OsRng.next_u32() % 334))
}

/// Sends a keepalive (and so a handshake initiation when there is no session) at once.
fn kick(shared: &Shared, peer: &Peer) {
    let snap = lock(&shared.snapshot).clone();
    let mut buf = vec![0u8; 256];
    let mut inner = peer.lock();
    let Some(ep) = inner.endpoint else { return };
    let Some(tunn) = inner.tunn.as_mut() else {
        return;
    };
    let pkt = match tunn.encapsulate(&[], &mut buf) {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        _ => return,
    };
    inner.last_tx = Instant::now();
    drop(inner);
    peer.tx_bytes.fetch_add(pkt.len() as u64, Ordering::Relaxed);
    send_one(&snap, shared, &pkt, ep);
}

struct SocketHost<'a> {
    shared: &'a Shared,
}

impl Host for SocketHost<'_> {
    fn bind(&mut self, port: u16, fwmark: u32) -> io::Result<u16> {
        let (sock, dual) = bind_udp(port, fwmark)?;
        let bound = sock.local_addr()?.port();
        *lock(&self.shared.sock) = (Arc::new(sock), dual);
        log::info!("{}: listening on UDP port {bound}", self.shared.name);
        Ok(bound)
    }

    fn set_fwmark(&mut self, fwmark: u32) -> io::Result<()> {
        let guard = lock(&self.shared.sock);
        sys::set_fwmark(guard.0.as_raw_fd(), fwmark)
    }
}

fn serve_uapi(shared: &Shared, listener: UnixListener) {
    // Non-blocking accept behind poll, so a stop request is seen even when the socket file is
    // gone and nobody can connect to wake us.
    if let Err(e) = listener.set_nonblocking(true) {
        log::error!("{}: control socket: {e}", shared.name);
    }
    while !shared.stop.load(Ordering::Relaxed) {
        match sys::poll_readable(listener.as_raw_fd(), Duration::from_millis(200)) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                log::warn!("{}: poll on control socket: {e}", shared.name);
                std::thread::sleep(TICK);
                continue;
            }
        }
        match listener.accept() {
            Ok((stream, _)) => {
                let _ = stream.set_nonblocking(false);
                if let Err(e) = handle_connection(shared, stream) {
                    log::debug!("{}: control connection: {e}", shared.name);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => log::warn!("{}: accept on control socket: {e}", shared.name),
        }
    }
}

/// Runs one request from a control connection against a device state; returns the reply.
/// Exposed for tests and the fuzzer through [`crate::apply_request`].
pub(crate) fn run_request(
    state: &mut DeviceState,
    first: &str,
    body: &[&str],
    host: &mut dyn Host,
) -> (String, Vec<Arc<Peer>>) {
    match uapi::parse_request(first, body) {
        Ok(Request::Get) => (format!("{}errno=0\n\n", state.render_get()), Vec::new()),
        Ok(Request::Set(ops)) => match state.apply(ops, host) {
            Ok(outcome) => ("errno=0\n\n".to_string(), outcome.kick),
            Err(e) => {
                log::warn!("set failed: {e}");
                (format!("errno=-{}\n\n", e.errno()), Vec::new())
            }
        },
        Err(e) => {
            log::warn!("bad request: {e}");
            (format!("errno=-{}\n\n", e.errno()), Vec::new())
        }
    }
}

fn handle_connection(shared: &Shared, stream: UnixStream) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(&stream);
    let mut writer = &stream;
    loop {
        let mut first = String::new();
        if reader.read_line(&mut first)? == 0 {
            return Ok(());
        }
        let first = first.trim_end_matches('\n').to_string();
        let mut body = Vec::new();
        let mut total = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                break;
            }
            total += line.len();
            if total > uapi::MAX_REQUEST_BYTES {
                writer.write_all(format!("errno=-{}\n\n", libc::ENOMEM).as_bytes())?;
                return Ok(());
            }
            let line = line.trim_end_matches('\n');
            if line.is_empty() {
                break;
            }
            body.push(line.to_string());
        }
        let refs: Vec<&str> = body.iter().map(String::as_str).collect();
        let (reply, kicks) = {
            let mut state = lock(&shared.state);
            let mut host = SocketHost { shared };
            let (reply, kicks) = run_request(&mut state, &first, &refs, &mut host);
            if first == "set=1" {
                publish(shared, &state);
            }
            (reply, kicks)
        };
        for peer in kicks {
            kick(shared, &peer);
        }
        writer.write_all(reply.as_bytes())?;
        if first != "get=1" && first != "set=1" {
            return Ok(());
        }
    }
}
