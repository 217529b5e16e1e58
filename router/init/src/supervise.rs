//! Services: each runs in its own process group, its stdout/stderr go line by line to the
//! console (tagged with the service name and uptime) and into a ring of recent lines. A service
//! that exits is restarted with exponential backoff (1 s doubling to 30 s; reset once it has run
//! 60 s), except after exit code [`EXIT_NO_RESTART`] (bad config), which waits for a new config.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::console;

/// "Do not restart me": the service's config is bad.
pub const EXIT_NO_RESTART: i32 = 3;
/// Lines kept per service.
pub const RING_LINES: usize = 200;
pub const BACKOFF_MIN: Duration = Duration::from_secs(1);
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A run this long resets the backoff.
pub const HEALTHY_AFTER: Duration = Duration::from_secs(60);

/// Restart delays: 1 s, 2 s, 4 s, ... 30 s; back to 1 s after a run of 60 s.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: BACKOFF_MIN }
    }
}

impl Backoff {
    /// The delay before restarting a service that ran for `ran_for`.
    pub fn on_exit(&mut self, ran_for: Duration) -> Duration {
        if ran_for >= HEALTHY_AFTER {
            self.next = BACKOFF_MIN;
        }
        let delay = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        delay
    }
}

/// Where a service is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Running {
        pid: i32,
    },
    /// Waiting to be restarted.
    Backoff {
        until: Instant,
    },
    /// Not restarted (bad config, or shutting down).
    Stopped {
        why: String,
    },
}

/// Recent output lines of a service.
pub type Ring = Arc<Mutex<VecDeque<String>>>;

/// A supervised service.
#[derive(Debug)]
pub struct Service {
    pub name: String,
    /// Program and arguments.
    pub argv: Vec<String>,
    /// argv\[0] as the program sees it.
    pub arg0: String,
    pub state: State,
    pub started: Instant,
    pub restarts: u32,
    pub ring: Ring,
    backoff: Backoff,
}

fn pump(name: String, stream: impl Read + Send + 'static, ring: Ring) {
    let thread_name = format!("log-{name}");
    let spawned = std::thread::Builder::new()
        .name(thread_name.clone())
        .spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                console::line(&name, &line);
                let mut r = ring.lock().unwrap_or_else(|p| p.into_inner());
                if r.len() == RING_LINES {
                    r.pop_front();
                }
                r.push_back(line);
            }
        });
    if let Err(e) = spawned {
        console::line("init", &format!("{thread_name}: cannot start: {e}"));
    }
}

impl Service {
    pub fn new(name: &str, arg0: &str, argv: Vec<String>) -> Service {
        Service {
            name: name.to_owned(),
            argv,
            arg0: arg0.to_owned(),
            state: State::Stopped {
                why: "not started".into(),
            },
            started: Instant::now(),
            restarts: 0,
            ring: Arc::default(),
            backoff: Backoff::default(),
        }
    }

    /// Start the service in its own process group.
    pub fn start(&mut self) {
        let Some((program, args)) = self.argv.split_first() else {
            return;
        };
        let spawned = Command::new(program)
            .arg0(&self.arg0)
            .args(args)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        match spawned {
            Ok(mut child) => {
                let pid = child.id() as i32;
                if let Some(out) = child.stdout.take() {
                    pump(self.name.clone(), out, self.ring.clone());
                }
                if let Some(err) = child.stderr.take() {
                    pump(self.name.clone(), err, self.ring.clone());
                }
                // The init reaps with waitpid(-1); the Child handle is not used again.
                drop(child);
                self.started = Instant::now();
                self.state = State::Running { pid };
                crate::say!("{}: started (pid {pid})", self.name);
            }
            Err(e) => {
                let delay = self.backoff.on_exit(Duration::ZERO);
                crate::say!(
                    "{}: cannot start {program}: {e}; retrying in {} s",
                    self.name,
                    delay.as_secs()
                );
                self.state = State::Backoff {
                    until: Instant::now() + delay,
                };
            }
        }
    }

    /// The process `pid` ended with `status` (exit code, or None when killed by a signal).
    /// Decides whether and when it restarts.
    pub fn exited(&mut self, code: Option<i32>, signal: Option<i32>, shutting_down: bool) {
        let ran = self.started.elapsed();
        let how = match (code, signal) {
            (Some(c), _) => format!("exited with code {c}"),
            (None, Some(s)) => format!("killed by signal {s}"),
            _ => "ended".to_owned(),
        };
        if shutting_down {
            crate::say!("{}: {how}", self.name);
            self.state = State::Stopped { why: how };
        } else if code == Some(EXIT_NO_RESTART) {
            crate::say!(
                "{}: {how} (bad config); not restarting until the config changes",
                self.name
            );
            self.state = State::Stopped {
                why: "bad config".into(),
            };
        } else {
            let delay = self.backoff.on_exit(ran);
            self.restarts += 1;
            crate::say!(
                "{}: {how} after {:.1} s; restarting in {} s",
                self.name,
                ran.as_secs_f64(),
                delay.as_secs()
            );
            self.state = State::Backoff {
                until: Instant::now() + delay,
            };
        }
    }

    /// Start the service if its backoff is over.
    pub fn tick(&mut self) {
        if let State::Backoff { until } = self.state {
            if Instant::now() >= until {
                self.start();
            }
        }
    }

    pub fn pid(&self) -> Option<i32> {
        match self.state {
            State::Running { pid } => Some(pid),
            _ => None,
        }
    }

    /// Signal the service's process group.
    pub fn signal(&self, sig: Signal) -> bool {
        match self.pid() {
            Some(pid) => killpg(Pid::from_raw(pid), sig).is_ok(),
            None => false,
        }
    }

    /// One status line.
    pub fn status(&self) -> String {
        let state = match &self.state {
            State::Running { pid } => format!(
                "running, pid {pid}, up {:.0} s",
                self.started.elapsed().as_secs_f64()
            ),
            State::Backoff { until } => format!(
                "restarting in {:.1} s",
                until
                    .saturating_duration_since(Instant::now())
                    .as_secs_f64()
            ),
            State::Stopped { why } => format!("stopped ({why})"),
        };
        format!("{}: {state}, {} restarts", self.name, self.restarts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_30_and_resets_after_a_healthy_run() {
        let mut b = Backoff::default();
        let quick = Duration::from_millis(100);
        let got: Vec<u64> = (0..7).map(|_| b.on_exit(quick).as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(b.on_exit(Duration::from_secs(61)).as_secs(), 1);
        assert_eq!(b.on_exit(quick).as_secs(), 2);
    }
}
