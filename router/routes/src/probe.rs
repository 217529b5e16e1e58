//! Tunnel health: a BFD-like probe state machine (pure: time is passed in) and the
//! handshake-freshness input from the data plane.
//!
//! Every `interval` the caller calls [`ProbeMachine::tick`], which says which sequence number
//! to send. A probe still unanswered at the next tick is a miss; `down_after` consecutive misses
//! take the tunnel down, and so does hearing nothing from the peer (answers or its own probes)
//! for the detection time `down_after` x interval, as in BFD ([`ProbeMachine::check`]); `up_after` consecutive answers bring a down tunnel back up. A fresh
//! machine starts in [`ProbeState::Init`], which counts as up (routes are installed at once)
//! and becomes `Up` at the first answer or `Down` after `down_after` misses.

use std::fmt;
use std::time::{Duration, Instant};

use sitelink_config::network::Probe;

/// A tunnel whose last handshake is older than this is down, whatever the probes say:
/// WireGuard re-handshakes every 120 s and gives up after 180 s (`REJECT_AFTER_TIME`); 15 s
/// of margin.
pub const HANDSHAKE_STALE: Duration = Duration::from_secs(195);

/// Probe parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeParams {
    pub interval: Duration,
    pub down_after: u32,
    pub up_after: u32,
}

impl From<&Probe> for ProbeParams {
    fn from(p: &Probe) -> Self {
        ProbeParams {
            interval: Duration::from_millis(u64::from(p.interval_ms.max(1))),
            down_after: p.down_after.max(1),
            up_after: p.up_after.max(1),
        }
    }
}

/// A tunnel's probe state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeState {
    /// Not decided yet; routes are installed.
    Init,
    Up,
    Down,
}

impl fmt::Display for ProbeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProbeState::Init => "init",
            ProbeState::Up => "up",
            ProbeState::Down => "down",
        })
    }
}

/// A state change, with why it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub from: ProbeState,
    pub to: ProbeState,
    pub reason: String,
    /// The last measured round-trip time.
    pub rtt: Option<Duration>,
}

impl fmt::Display for Transition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}: {}", self.from, self.to, self.reason)?;
        match self.rtt {
            Some(r) => write!(f, " (rtt {:.3} ms)", r.as_secs_f64() * 1e3),
            None => write!(f, " (no rtt measured)"),
        }
    }
}

/// The probe state machine of one tunnel.
#[derive(Debug, Clone)]
pub struct ProbeMachine {
    params: ProbeParams,
    state: ProbeState,
    misses: u32,
    answers: u32,
    next_seq: u32,
    outstanding: Option<(u32, Instant)>,
    /// When we last heard the peer: an answer to our probe, or a probe of its own.
    last_heard: Option<Instant>,
    rtt: Option<Duration>,
    /// Handshake older than [`HANDSHAKE_STALE`].
    stale: bool,
}

impl ProbeMachine {
    pub fn new(params: ProbeParams) -> Self {
        ProbeMachine {
            params,
            state: ProbeState::Init,
            misses: 0,
            answers: 0,
            next_seq: 1,
            outstanding: None,
            last_heard: None,
            rtt: None,
            stale: false,
        }
    }

    pub fn params(&self) -> ProbeParams {
        self.params
    }

    /// The probe state (not counting handshake freshness).
    pub fn state(&self) -> ProbeState {
        self.state
    }

    /// The last measured round-trip time.
    pub fn rtt(&self) -> Option<Duration> {
        self.rtt
    }

    /// Whether routes over this tunnel should be installed: probes not down and the last
    /// handshake not stale.
    pub fn routable(&self) -> bool {
        self.state != ProbeState::Down && !self.stale
    }

    fn go(&mut self, to: ProbeState, reason: String) -> Option<Transition> {
        if self.state == to {
            return None;
        }
        let t = Transition {
            from: self.state,
            to,
            reason,
            rtt: self.rtt,
        };
        self.state = to;
        Some(t)
    }

    /// Time to send a probe: returns the sequence number to send, and a transition if the
    /// previous probe going unanswered made the tunnel go down.
    pub fn tick(&mut self, now: Instant) -> (u32, Option<Transition>) {
        let mut t = None;
        if self.outstanding.take().is_some() {
            self.misses += 1;
            self.answers = 0;
            if self.misses >= self.params.down_after {
                let reason = format!(
                    "{} consecutive probes unanswered (interval {} ms)",
                    self.misses,
                    self.params.interval.as_millis()
                );
                t = self.go(ProbeState::Down, reason);
            }
        }
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1).max(1);
        self.outstanding = Some((seq, now));
        (seq, t)
    }

    /// An answer arrived for `seq`. Answers to anything but the outstanding probe (late or
    /// duplicated) are ignored.
    pub fn answer(&mut self, seq: u32, now: Instant) -> Option<Transition> {
        match self.outstanding {
            Some((s, sent)) if s == seq => {
                self.outstanding = None;
                self.rtt = Some(now.saturating_duration_since(sent));
                self.last_heard = Some(now);
            }
            _ => return None,
        }
        self.misses = 0;
        self.answers += 1;
        match self.state {
            ProbeState::Up => None,
            ProbeState::Init => self.go(ProbeState::Up, "first probe answered".into()),
            ProbeState::Down if self.answers >= self.params.up_after => {
                let reason = format!("{} consecutive probes answered", self.answers);
                self.go(ProbeState::Up, reason)
            }
            ProbeState::Down => None,
        }
    }

    /// Feed the data plane's last-handshake age (`None`: unknown or no handshake yet, which
    /// does not count against the tunnel). Returns a message when freshness changed.
    /// The peer's own probe arrived: the tunnel carries traffic towards us.
    pub fn heard(&mut self, now: Instant) {
        self.last_heard = Some(now);
    }

    /// Detection time, as in BFD: `down_after` x interval.
    pub fn detection_time(&self) -> Duration {
        self.params.interval * self.params.down_after
    }

    /// When [`ProbeMachine::check`] next has something to decide; `None` if nothing is pending.
    pub fn deadline(&self) -> Option<Instant> {
        match self.state {
            ProbeState::Down => None,
            _ => Some(self.last_heard? + self.detection_time()),
        }
    }

    /// Declare the tunnel down once nothing was heard from the peer (answers to our probes or
    /// probes of its own) for the detection time. This bounds failover by `down_after` x
    /// interval after the last packet heard, whatever the phase of the probes; counting misses
    /// at ticks alone could take one interval longer. Call it often (the routed loop wakes at
    /// [`ProbeMachine::deadline`]).
    pub fn check(&mut self, now: Instant) -> Option<Transition> {
        let deadline = self.deadline()?;
        if now < deadline {
            return None;
        }
        self.answers = 0;
        let reason = format!(
            "nothing heard for {} ms ({} x {} ms)",
            now.saturating_duration_since(deadline - self.detection_time())
                .as_millis(),
            self.params.down_after,
            self.params.interval.as_millis()
        );
        self.go(ProbeState::Down, reason)
    }

    pub fn handshake(&mut self, age: Option<Duration>) -> Option<String> {
        let stale = age.is_some_and(|a| a > HANDSHAKE_STALE);
        if stale == self.stale {
            return None;
        }
        self.stale = stale;
        Some(match (stale, age) {
            (true, Some(a)) => format!(
                "last handshake {} s ago (> {} s): counted as down",
                a.as_secs(),
                HANDSHAKE_STALE.as_secs()
            ),
            _ => "handshake fresh again".to_owned(),
        })
    }
}

/// The data plane's view of handshakes, fed by the caller (the device binary wires it to the
/// WireGuard daemons). A tunnel whose last handshake is older than [`HANDSHAKE_STALE`] is
/// treated as down.
pub trait HandshakeSource: Send {
    /// Time since the last completed handshake on `ifname`; `None` if unknown or none yet.
    fn handshake_age(&self, ifname: &str) -> Option<Duration>;
}

/// Handshake ages as a closure.
impl<F: Fn(&str) -> Option<Duration> + Send> HandshakeSource for F {
    fn handshake_age(&self, ifname: &str) -> Option<Duration> {
        self(ifname)
    }
}

/// Probe packets: `SLP1`, kind (1 = request, 2 = reply), sequence number (u32 BE).
pub(crate) mod wire {
    pub const LEN: usize = 9;
    pub const REQUEST: u8 = 1;
    pub const REPLY: u8 = 2;
    const MAGIC: &[u8; 4] = b"SLP1";

    pub fn encode(kind: u8, seq: u32) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        b[..4].copy_from_slice(MAGIC);
        b[4] = kind;
        b[5..].copy_from_slice(&seq.to_be_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Option<(u8, u32)> {
        if b.len() != LEN || &b[..4] != MAGIC {
            return None;
        }
        Some((b[4], u32::from_be_bytes([b[5], b[6], b[7], b[8]])))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> ProbeParams {
        ProbeParams {
            interval: Duration::from_millis(100),
            down_after: 3,
            up_after: 3,
        }
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn first_answer_makes_init_up_with_rtt() {
        let t0 = Instant::now();
        let mut m = ProbeMachine::new(params());
        assert_eq!(m.state(), ProbeState::Init);
        assert!(m.routable());
        let (seq, t) = m.tick(t0);
        assert!(t.is_none());
        let t = m.answer(seq, t0 + 3 * MS).expect("transition");
        assert_eq!((t.from, t.to), (ProbeState::Init, ProbeState::Up));
        assert_eq!(t.rtt, Some(3 * MS));
        assert_eq!(m.rtt(), Some(3 * MS));
        assert!(t.to_string().contains("rtt 3.000 ms"), "{t}");
    }

    #[test]
    fn down_at_exactly_down_after_misses() {
        let t0 = Instant::now();
        let mut m = ProbeMachine::new(params());
        let (s, _) = m.tick(t0);
        m.answer(s, t0 + MS);
        // Probes 2, 3, 4 go unanswered; misses are counted at the following ticks.
        m.tick(t0 + 100 * MS);
        let (_, t) = m.tick(t0 + 200 * MS);
        assert!(t.is_none(), "1 miss");
        let (_, t) = m.tick(t0 + 300 * MS);
        assert!(t.is_none(), "2 misses");
        assert!(m.routable());
        let (_, t) = m.tick(t0 + 400 * MS);
        let t = t.expect("down at the 3rd miss");
        assert_eq!((t.from, t.to), (ProbeState::Up, ProbeState::Down));
        assert!(
            t.reason.contains("3 consecutive probes unanswered"),
            "{}",
            t.reason
        );
        assert!(!m.routable());
        // More misses: no further transitions.
        assert!(m.tick(t0 + 500 * MS).1.is_none());
    }

    #[test]
    fn down_after_detection_time_without_traffic_whatever_the_phase() {
        let p = params();
        let mut m = ProbeMachine::new(p);
        let t0 = Instant::now();
        let (seq, _) = m.tick(t0);
        assert!(m.answer(seq, t0 + Duration::from_millis(3)).is_some());
        // The peer's own probe arrives half an interval later; then the tunnel is cut.
        let heard = t0 + p.interval / 2;
        m.heard(heard);
        let detect = p.interval * p.down_after;
        assert_eq!(m.deadline(), Some(heard + detect));
        assert!(m.check(heard + detect - Duration::from_millis(1)).is_none());
        let t = m.check(heard + detect).expect("down at the detection time");
        assert_eq!(t.to, ProbeState::Down);
        assert!(t.reason.contains("nothing heard"), "{}", t.reason);
        assert!(m.check(heard + detect * 2).is_none(), "one transition");
        assert_eq!(m.deadline(), None);
    }

    #[test]
    fn up_at_exactly_up_after_answers() {
        let t0 = Instant::now();
        let mut m = ProbeMachine::new(params());
        for i in 0..4 {
            m.tick(t0 + i * 100 * MS);
        }
        assert_eq!(m.state(), ProbeState::Down);
        let mut now = t0 + 400 * MS;
        let mut seqs = Vec::new();
        for n in 1..=3u32 {
            let (s, _) = m.tick(now);
            seqs.push(s);
            let t = m.answer(s, now + 2 * MS);
            if n < 3 {
                assert!(t.is_none(), "answer {n} must not bring it up");
                assert_eq!(m.state(), ProbeState::Down);
            } else {
                let t = t.expect("up at the 3rd answer");
                assert_eq!((t.from, t.to), (ProbeState::Down, ProbeState::Up));
                assert_eq!(t.rtt, Some(2 * MS));
            }
            now += 100 * MS;
        }
        // A miss in between resets the answer count.
        let mut m = ProbeMachine::new(params());
        for i in 0..4 {
            m.tick(t0 + i * 100 * MS);
        }
        let (s, _) = m.tick(t0);
        m.answer(s, t0);
        let (s, _) = m.tick(t0);
        m.answer(s, t0);
        m.tick(t0); // unanswered
        let (s, _) = m.tick(t0);
        assert!(m.answer(s, t0).is_none());
        assert_eq!(m.state(), ProbeState::Down);
    }

    #[test]
    fn late_and_duplicate_answers_are_ignored() {
        let t0 = Instant::now();
        let mut m = ProbeMachine::new(params());
        let (s1, _) = m.tick(t0);
        let (_s2, _) = m.tick(t0 + 100 * MS);
        assert!(m.answer(s1, t0 + 150 * MS).is_none());
        assert_eq!(m.rtt(), None);
        assert_eq!(m.state(), ProbeState::Init);
    }

    #[test]
    fn stale_handshake_counts_as_down() {
        let mut m = ProbeMachine::new(params());
        assert!(m.handshake(Some(Duration::from_secs(30))).is_none());
        assert!(m.handshake(None).is_none());
        let msg = m.handshake(Some(Duration::from_secs(200))).expect("stale");
        assert!(msg.contains("200 s"), "{msg}");
        assert!(!m.routable());
        assert!(m.handshake(Some(Duration::from_secs(1))).is_some());
        assert!(m.routable());
    }

    #[test]
    fn wire_roundtrip() {
        let b = wire::encode(wire::REQUEST, 77);
        assert_eq!(wire::decode(&b), Some((wire::REQUEST, 77)));
        assert_eq!(wire::decode(&b[..5]), None);
        assert_eq!(wire::decode(b"XXXX\x01\0\0\0\x01"), None);
    }

    #[test]
    fn params_from_config() {
        let p = ProbeParams::from(&Probe::default());
        assert_eq!(p.interval, Duration::from_secs(1));
        assert_eq!((p.down_after, p.up_after), (3, 3));
    }
}
