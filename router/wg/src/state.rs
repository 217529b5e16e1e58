//! Control-plane state of one WireGuard device: keys, port, fwmark, peers and the cryptokey
//! routing table, and the semantics of applying a `set=1` request to it (cases U1-U9).
//!
//! No sockets live here: binding the UDP port and setting the fwmark go through [`Host`], so the
//! state machine is unit tested without root.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::Tunn;
use boringtun::x25519::{PublicKey, StaticSecret};
use ipnet::IpNet;

use crate::allowed_ips::{AllowedIps, PeerId};
use crate::uapi::{DeviceOp, Key, ParseSetError, PeerChange, PeerOp};

/// Handshake initiations per second (per device) before cookie replies are required (D5).
pub const HANDSHAKE_RATE_LIMIT: u64 = 100;

/// What the device does for the state machine: bind the UDP port, set the fwmark.
pub trait Host {
    /// Binds the UDP socket to `port` (0 = random) and returns the bound port. On error the
    /// old socket stays in place.
    fn bind(&mut self, port: u16, fwmark: u32) -> io::Result<u16>;
    /// Sets `SO_MARK` on the UDP socket (0 = off).
    fn set_fwmark(&mut self, fwmark: u32) -> io::Result<()>;
}

/// Why applying a `set=1` request failed. Changes before the failing line stay applied, as in
/// wireguard-go.
#[derive(Debug, thiserror::Error)]
pub enum SetError {
    /// The request did not parse.
    #[error(transparent)]
    Parse(#[from] ParseSetError),
    /// The UDP port could not be bound.
    #[error("cannot bind UDP port {port}: {source}")]
    Bind {
        /// The port asked for.
        port: u16,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// `SO_MARK` could not be set.
    #[error("cannot set fwmark {fwmark}: {source}")]
    Fwmark {
        /// The mark asked for.
        fwmark: u32,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl SetError {
    /// The positive errno; the reply carries it negated (U3).
    pub fn errno(&self) -> i32 {
        match self {
            SetError::Parse(e) => e.errno(),
            SetError::Bind { source, .. } | SetError::Fwmark { source, .. } => {
                source.raw_os_error().unwrap_or(libc::EIO)
            }
        }
    }
}

/// The mutable per-peer data the data path needs, behind one per-peer lock.
pub struct PeerInner {
    /// The protocol engine; `None` while the device has no private key.
    pub tunn: Option<Tunn>,
    /// Where to send; moves on authenticated packets from elsewhere (roaming).
    pub endpoint: Option<SocketAddr>,
    /// Persistent keepalive interval in seconds (0 = off). Kept here, not in `Tunn`, so it can
    /// change without losing the session.
    pub keepalive: u16,
    /// When we last sent anything to this peer (for persistent keepalive).
    pub last_tx: Instant,
    preshared_key: Option<[u8; 32]>,
}

impl std::fmt::Debug for PeerInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerInner")
            .field("endpoint", &self.endpoint)
            .field("keepalive", &self.keepalive)
            .field("has_session", &self.tunn.is_some())
            .finish_non_exhaustive()
    }
}

/// One peer. Shared by the control plane and the data path through `Arc`.
#[derive(Debug)]
pub struct Peer {
    /// Index in this device; also the top 24 bits of the session indices `Tunn` hands out.
    pub id: PeerId,
    /// The peer's public key.
    pub public_key: Key,
    inner: Mutex<PeerInner>,
    /// Bytes received from this peer (UDP payload).
    pub rx_bytes: AtomicU64,
    /// Bytes sent to this peer (UDP payload).
    pub tx_bytes: AtomicU64,
}

impl Peer {
    /// Locks the per-peer data. A poisoned lock is taken over: the data is still consistent
    /// enough to keep forwarding.
    pub fn lock(&self) -> MutexGuard<'_, PeerInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The device's static key pair.
#[derive(Clone)]
pub struct StaticKeys {
    /// Our private key.
    pub secret: StaticSecret,
    /// Its public key.
    pub public: PublicKey,
}

impl std::fmt::Debug for StaticKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StaticKeys(..)")
    }
}

/// Everything `get=1` reports and `set=1` changes.
pub struct DeviceState {
    keys: Option<StaticKeys>,
    listen_port: u16,
    fwmark: u32,
    by_id: BTreeMap<PeerId, Arc<Peer>>,
    by_key: HashMap<Key, PeerId>,
    allowed: HashMap<PeerId, BTreeSet<IpNet>>,
    table: AllowedIps,
    rate_limiter: Arc<RateLimiter>,
    next_id: PeerId,
}

impl std::fmt::Debug for DeviceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceState")
            .field("listen_port", &self.listen_port)
            .field("fwmark", &self.fwmark)
            .field("peers", &self.by_id.len())
            .finish_non_exhaustive()
    }
}

impl Default for DeviceState {
    fn default() -> Self {
        Self::new()
    }
}

/// Peers whose persistent keepalive was switched on by a request: the device sends them a
/// keepalive (and so a handshake initiation) at once (D1).
#[derive(Debug, Default)]
pub struct ApplyOutcome {
    /// Peers to send a keepalive to now.
    pub kick: Vec<Arc<Peer>>,
}

impl DeviceState {
    /// An empty device: no key, port 0, no peers.
    pub fn new() -> Self {
        let placeholder = PublicKey::from([0u8; 32]);
        DeviceState {
            keys: None,
            listen_port: 0,
            fwmark: 0,
            by_id: BTreeMap::new(),
            by_key: HashMap::new(),
            allowed: HashMap::new(),
            table: AllowedIps::default(),
            rate_limiter: Arc::new(RateLimiter::new(&placeholder, HANDSHAKE_RATE_LIMIT)),
            next_id: 1,
        }
    }

    /// Records the port the device bound at start.
    pub fn set_bound_port(&mut self, port: u16) {
        self.listen_port = port;
    }

    /// The bound UDP port.
    pub fn listen_port(&self) -> u16 {
        self.listen_port
    }

    /// The fwmark (0 = off).
    pub fn fwmark(&self) -> u32 {
        self.fwmark
    }

    /// The static key pair, if set.
    pub fn keys(&self) -> Option<&StaticKeys> {
        self.keys.as_ref()
    }

    /// The device-wide handshake rate limiter (cookie replies under load).
    pub fn rate_limiter(&self) -> &Arc<RateLimiter> {
        &self.rate_limiter
    }

    /// The cryptokey routing table.
    pub fn table(&self) -> &AllowedIps {
        &self.table
    }

    /// All peers by id.
    pub fn peers(&self) -> &BTreeMap<PeerId, Arc<Peer>> {
        &self.by_id
    }

    /// The peer with this public key.
    pub fn peer_by_key(&self, key: &Key) -> Option<&Arc<Peer>> {
        self.by_key.get(key).and_then(|id| self.by_id.get(id))
    }

    /// The allowed IPs of a peer, sorted.
    pub fn allowed_ips(&self, id: PeerId) -> impl Iterator<Item = &IpNet> {
        self.allowed.get(&id).into_iter().flatten()
    }

    /// Applies a parsed `set=1` request in order.
    pub fn apply(
        &mut self,
        ops: Vec<DeviceOp>,
        host: &mut dyn Host,
    ) -> Result<ApplyOutcome, SetError> {
        let mut outcome = ApplyOutcome::default();
        for op in ops {
            match op {
                DeviceOp::PrivateKey(k) => self.set_private_key(k),
                DeviceOp::ListenPort(port) => {
                    if port != self.listen_port || self.listen_port == 0 {
                        let bound = host
                            .bind(port, self.fwmark)
                            .map_err(|source| SetError::Bind { port, source })?;
                        self.listen_port = bound;
                    }
                }
                DeviceOp::Fwmark(fwmark) => {
                    if fwmark != self.fwmark {
                        host.set_fwmark(fwmark)
                            .map_err(|source| SetError::Fwmark { fwmark, source })?;
                        self.fwmark = fwmark;
                    }
                }
                DeviceOp::ReplacePeers => {
                    let ids: Vec<PeerId> = self.by_id.keys().copied().collect();
                    for id in ids {
                        self.remove_peer(id);
                    }
                }
                DeviceOp::Peer(p) => self.apply_peer(p, &mut outcome),
            }
        }
        Ok(outcome)
    }

    fn set_private_key(&mut self, k: Key) {
        if k.is_zero() {
            self.keys = None;
            for peer in self.by_id.values() {
                peer.lock().tunn = None;
            }
            return;
        }
        let secret = StaticSecret::from(k.0);
        let public = PublicKey::from(&secret);
        if let Some(old) = &self.keys {
            if old.public == public {
                return;
            }
        }
        // A peer with our own public key cannot exist (wireguard-go drops it too).
        if let Some(id) = self.by_key.get(&Key(public.to_bytes())).copied() {
            self.remove_peer(id);
        }
        self.rate_limiter = Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT));
        self.keys = Some(StaticKeys { secret, public });
        let ids: Vec<PeerId> = self.by_id.keys().copied().collect();
        for id in ids {
            if let Some(peer) = self.by_id.get(&id).cloned() {
                let mut inner = peer.lock();
                let psk = inner.preshared_key;
                inner.tunn = self.new_tunn(&peer.public_key, psk, id);
            }
        }
    }

    fn new_tunn(&self, peer_key: &Key, psk: Option<[u8; 32]>, id: PeerId) -> Option<Tunn> {
        let keys = self.keys.as_ref()?;
        Some(Tunn::new(
            keys.secret.clone(),
            PublicKey::from(peer_key.0),
            psk,
            None,
            id,
            Some(self.rate_limiter.clone()),
        ))
    }

    fn alloc_id(&mut self) -> PeerId {
        // Tunn uses the id as the top 24 bits of its session index.
        loop {
            let id = self.next_id;
            self.next_id = if self.next_id >= (1 << 24) - 1 {
                1
            } else {
                self.next_id + 1
            };
            if !self.by_id.contains_key(&id) {
                return id;
            }
        }
    }

    fn remove_peer(&mut self, id: PeerId) {
        if let Some(peer) = self.by_id.remove(&id) {
            self.by_key.remove(&peer.public_key);
        }
        for net in self.allowed.remove(&id).unwrap_or_default() {
            self.table.remove(net, id);
        }
    }

    fn apply_peer(&mut self, op: PeerOp, outcome: &mut ApplyOutcome) {
        if let Some(keys) = &self.keys {
            if keys.public.as_bytes() == &op.public_key.0 {
                return; // our own key: ignored (U6)
            }
        }
        let existing = self.by_key.get(&op.public_key).copied();
        if op.remove {
            if let Some(id) = existing {
                self.remove_peer(id);
            }
            return;
        }
        let id = match existing {
            Some(id) => id,
            None if op.update_only => return,
            None => {
                let id = self.alloc_id();
                let tunn = self.new_tunn(&op.public_key, None, id);
                let peer = Peer {
                    id,
                    public_key: op.public_key,
                    inner: Mutex::new(PeerInner {
                        tunn,
                        endpoint: None,
                        keepalive: 0,
                        last_tx: Instant::now(),
                        preshared_key: None,
                    }),
                    rx_bytes: AtomicU64::new(0),
                    tx_bytes: AtomicU64::new(0),
                };
                self.by_id.insert(id, Arc::new(peer));
                self.by_key.insert(op.public_key, id);
                id
            }
        };
        let Some(peer) = self.by_id.get(&id).cloned() else {
            return;
        };
        for change in op.changes {
            match change {
                PeerChange::PresharedKey(k) => {
                    let psk = (!k.is_zero()).then_some(k.0);
                    let mut inner = peer.lock();
                    if inner.preshared_key != psk {
                        inner.preshared_key = psk;
                        inner.tunn = self.new_tunn(&peer.public_key, psk, id);
                    }
                }
                PeerChange::Endpoint(ep) => peer.lock().endpoint = Some(ep),
                PeerChange::PersistentKeepalive(secs) => {
                    let mut inner = peer.lock();
                    let was = inner.keepalive;
                    inner.keepalive = secs;
                    if secs > 0 && was != secs {
                        outcome.kick.push(peer.clone());
                    }
                }
                PeerChange::ReplaceAllowedIps => {
                    for net in self.allowed.remove(&id).unwrap_or_default() {
                        self.table.remove(net, id);
                    }
                }
                PeerChange::AddAllowedIp(net) => {
                    if let Some(old) = self.table.insert(net, id) {
                        if let Some(set) = self.allowed.get_mut(&old) {
                            set.remove(&net);
                        }
                    }
                    self.allowed.entry(id).or_default().insert(net);
                }
                PeerChange::RemoveAllowedIp(net) => {
                    if self.table.remove(net, id) {
                        if let Some(set) = self.allowed.get_mut(&id) {
                            set.remove(&net);
                        }
                    }
                }
            }
        }
    }

    /// The body of a `get=1` reply (without the final `errno=0` line), in wireguard-go's
    /// format. It includes `private_key`, as `wg show` derives the public key from it (U2).
    pub fn render_get(&self) -> String {
        let mut out = String::new();
        if let Some(keys) = &self.keys {
            let _ = writeln!(out, "private_key={}", Key(keys.secret.to_bytes()).to_hex());
        }
        let _ = writeln!(out, "listen_port={}", self.listen_port);
        if self.fwmark != 0 {
            let _ = writeln!(out, "fwmark={}", self.fwmark);
        }
        let now = SystemTime::now();
        for (id, peer) in &self.by_id {
            let _ = writeln!(out, "public_key={}", peer.public_key.to_hex());
            let inner = peer.lock();
            let psk = Key(inner.preshared_key.unwrap_or([0; 32]));
            let _ = writeln!(out, "preshared_key={}", psk.to_hex());
            let _ = writeln!(out, "protocol_version=1");
            if let Some(ep) = inner.endpoint {
                let _ = writeln!(out, "endpoint={ep}");
            }
            let (sec, nsec) = inner
                .tunn
                .as_ref()
                .and_then(Tunn::time_since_last_handshake)
                .and_then(|ago| now.checked_sub(ago))
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or((0, 0), |d| (d.as_secs(), d.subsec_nanos()));
            let _ = writeln!(out, "last_handshake_time_sec={sec}");
            let _ = writeln!(out, "last_handshake_time_nsec={nsec}");
            let _ = writeln!(out, "tx_bytes={}", peer.tx_bytes.load(Ordering::Relaxed));
            let _ = writeln!(out, "rx_bytes={}", peer.rx_bytes.load(Ordering::Relaxed));
            let _ = writeln!(out, "persistent_keepalive_interval={}", inner.keepalive);
            drop(inner);
            for net in self.allowed_ips(*id) {
                let _ = writeln!(out, "allowed_ip={net}");
            }
        }
        out
    }
}
