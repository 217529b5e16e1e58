//! The lab's internet: a userspace learning switch between TAP ports that delays every frame by
//! the one-way delay of the port it came from.
//!
//! Why not a kernel bridge with netem: the kernels this project runs its tests on are built
//! without `sch_netem` (and without any qdisc), so the delay lives here. A frame from site A to
//! site B waits A's delay; the answer waits B's; the round trip is the sum, as with netem on each
//! site's WAN egress.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::tap;

/// One switch port: a TAP device and the delay of frames entering through it.
#[derive(Debug, Clone, PartialEq)]
pub struct Port {
    pub name: String,
    pub delay: Duration,
}

impl std::str::FromStr for Port {
    type Err = String;
    /// `NAME:DELAY_MS`, e.g. `w-0:1.5`.
    fn from_str(s: &str) -> Result<Port, String> {
        let (name, ms) = s
            .split_once(':')
            .ok_or_else(|| format!("{s:?}: use NAME:DELAY_MS"))?;
        let ms: f64 = ms
            .parse()
            .map_err(|_| format!("{s:?}: {ms:?} is not a delay in milliseconds"))?;
        if !(0.0..=10_000.0).contains(&ms) {
            return Err(format!("{s:?}: delay must be 0 to 10000 ms"));
        }
        Ok(Port {
            name: name.to_owned(),
            delay: Duration::from_secs_f64(ms / 1000.0),
        })
    }
}

struct Pending {
    due: Instant,
    seq: u64,
    frame: Vec<u8>,
    /// Output port, or None to flood to every port but `from`.
    to: Option<usize>,
    from: usize,
}

impl PartialEq for Pending {
    fn eq(&self, o: &Self) -> bool {
        (self.due, self.seq) == (o.due, o.seq)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Pending {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(o.due, o.seq))
    }
}

#[derive(Default)]
struct Queue {
    heap: BinaryHeap<Reverse<Pending>>,
    seq: u64,
}

/// Frames waiting in the switch at most; beyond this, frames are dropped like a full queue.
const MAX_QUEUED: usize = 20_000;

/// Open every port's TAP device, write `ready` (so the caller can move the devices into their
/// namespaces), then switch frames until killed.
pub fn run(ports: &[Port], ready: &Path) -> io::Result<()> {
    let taps: Vec<Arc<File>> = ports
        .iter()
        .map(|p| {
            tap::open(&p.name)
                .map(Arc::new)
                .map_err(|e| io::Error::new(e.kind(), format!("cannot create TAP {}: {e}", p.name)))
        })
        .collect::<io::Result<_>>()?;
    std::fs::write(ready, "ready\n")?;
    let macs: Arc<Mutex<HashMap<[u8; 6], usize>>> = Arc::default();
    let queue = Arc::new((Mutex::new(Queue::default()), Condvar::new()));
    for (i, (port, tap)) in ports.iter().zip(&taps).enumerate() {
        let (tap, macs, queue, delay) = (tap.clone(), macs.clone(), queue.clone(), port.delay);
        std::thread::Builder::new()
            .name(format!("rx-{}", port.name))
            .spawn(move || receive(i, &tap, delay, &macs, &queue))?;
    }
    transmit(&taps, &queue)
}

fn mac(frame: &[u8], at: usize) -> Option<[u8; 6]> {
    frame.get(at..at + 6)?.try_into().ok()
}

fn receive(
    from: usize,
    tap: &File,
    delay: Duration,
    macs: &Mutex<HashMap<[u8; 6], usize>>,
    queue: &(Mutex<Queue>, Condvar),
) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let n = match (&*tap).read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // The device went away (namespace deleted): this port is done.
            Err(_) => return,
        };
        let frame = &buf[..n];
        let (Some(dst), Some(src)) = (mac(frame, 0), mac(frame, 6)) else {
            continue;
        };
        let to = {
            let mut table = macs.lock().unwrap_or_else(|p| p.into_inner());
            if src[0] & 1 == 0 {
                table.insert(src, from);
            }
            if dst[0] & 1 == 0 {
                table.get(&dst).copied()
            } else {
                None
            }
        };
        if to == Some(from) {
            continue;
        }
        let (lock, cv) = queue;
        let mut q = lock.lock().unwrap_or_else(|p| p.into_inner());
        if q.heap.len() >= MAX_QUEUED {
            continue;
        }
        q.seq += 1;
        let seq = q.seq;
        q.heap.push(Reverse(Pending {
            due: Instant::now() + delay,
            seq,
            frame: frame.to_vec(),
            to,
            from,
        }));
        cv.notify_one();
    }
}

fn transmit(taps: &[Arc<File>], queue: &(Mutex<Queue>, Condvar)) -> io::Result<()> {
    let (lock, cv) = queue;
    loop {
        let next = {
            let mut q = lock.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                let now = Instant::now();
                match q.heap.peek() {
                    Some(Reverse(p)) if p.due <= now => break q.heap.pop().map(|Reverse(p)| p),
                    Some(Reverse(p)) => {
                        let wait = p.due - now;
                        q = cv
                            .wait_timeout(q, wait)
                            .map(|(g, _)| g)
                            .unwrap_or_else(|p| p.into_inner().0);
                    }
                    None => q = cv.wait(q).unwrap_or_else(|p| p.into_inner()),
                }
            }
        };
        let Some(p) = next else { continue };
        match p.to {
            Some(i) => {
                let _ = (&*taps[i]).write(&p.frame);
            }
            None => {
                for (i, tap) in taps.iter().enumerate().filter(|&(i, _)| i != p.from) {
                    let _ = i;
                    let _ = (&**tap).write(&p.frame);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_parse() {
        assert_eq!(
            "w-0:1.5".parse::<Port>().unwrap(),
            Port {
                name: "w-0".into(),
                delay: Duration::from_micros(1500)
            }
        );
        assert!("w-0".parse::<Port>().is_err());
        assert!("w-0:-1".parse::<Port>().is_err());
        assert!("w-0:abc".parse::<Port>().is_err());
    }
}
