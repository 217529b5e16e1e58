//! Test infrastructure shared by the netns and vm tiers: network namespaces and veth pairs
//! that clean up on drop, child processes killed on drop, `wait_until`, and a command runner
//! whose errors carry the command line and its stderr.
//!
//! Everything here acts only inside namespaces it creates (or on loopback); nothing touches
//! the host's routes.

use std::fmt;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A command that failed (could not start, or exited non-zero).
#[derive(Debug)]
pub struct CmdError {
    /// The command line as run.
    pub command: String,
    /// What went wrong: the exit status and stderr, or the spawn error.
    pub detail: String,
}

impl fmt::Display for CmdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` failed: {}", self.command, self.detail)
    }
}

impl std::error::Error for CmdError {}

/// The command line of `cmd`, for logs and errors.
pub fn command_line(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` to completion, logs its command line to stderr, and returns its stdout. A
/// non-zero exit is an error that names the command and carries its stderr.
pub fn run(cmd: &mut Command) -> Result<String, CmdError> {
    let out = output(cmd)?;
    if !out.status.success() {
        return Err(CmdError {
            command: command_line(cmd),
            detail: format!(
                "{}; stderr: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `cmd` to completion and returns its full output whatever the exit status.
pub fn output(cmd: &mut Command) -> Result<Output, CmdError> {
    let line = command_line(cmd);
    eprintln!("+ {line}");
    cmd.stdin(Stdio::null()).output().map_err(|e| CmdError {
        command: line,
        detail: e.to_string(),
    })
}

/// Builds a `Command` from a program and arguments.
pub fn cmd<I, S>(program: &str, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut c = Command::new(program);
    c.args(args);
    c
}

/// Polls `cond` every 50 ms until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> Result<(), String> {
    let start = Instant::now();
    loop {
        if cond() {
            return Ok(());
        }
        if start.elapsed() >= timeout {
            return Err(format!("condition not met within {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether the current process runs as root (the netns tier needs it).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// Panics with a clear message unless running as root: netns tests must fail, not skip.
pub fn require_root() {
    assert!(
        is_root(),
        "this test needs root (netns tier): run as root with --ignored"
    );
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A short name unique to this process and call: `{prefix}{pid % 10000}x{n}`, at most 15
/// bytes when `prefix` is at most 4 bytes (fits interface names).
pub fn unique_name(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}x{n}", std::process::id() % 10000)
}

/// A network namespace that is deleted, with every process still in it killed, on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a namespace with a unique name starting with `prefix`, with `lo` up.
    pub fn new(prefix: &str) -> Result<Netns, CmdError> {
        let name = unique_name(prefix);
        run(&mut cmd("ip", ["netns", "add", &name]))?;
        let ns = Netns { name };
        ns.run("ip", ["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A `Command` that runs `program args` inside this namespace.
    pub fn command<I, S>(&self, program: &str, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c.args(args);
        c
    }

    /// Runs `program args` in the namespace; see [`run`].
    pub fn run<I, S>(&self, program: &str, args: I) -> Result<String, CmdError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        run(&mut self.command(program, args))
    }

    /// Starts `program args` in the namespace in the background; killed when the guard drops.
    pub fn spawn<I, S>(&self, program: &str, args: I) -> Result<ChildGuard, CmdError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        ChildGuard::spawn(self.command(program, args))
    }

    /// `ip addr add ADDR dev DEV` and `ip link set DEV up` in this namespace. IPv6 addresses
    /// get `nodad` so they are usable at once.
    pub fn addr_up(&self, dev: &str, addr: &str) -> Result<(), CmdError> {
        if addr.contains(':') {
            self.run("ip", ["addr", "add", addr, "dev", dev, "nodad"])?;
        } else {
            self.run("ip", ["addr", "add", addr, "dev", dev])?;
        }
        self.run("ip", ["link", "set", dev, "up"])?;
        Ok(())
    }

    /// PIDs of processes in this namespace.
    pub fn pids(&self) -> Vec<i32> {
        run(&mut cmd("ip", ["netns", "pids", &self.name]))
            .map(|s| {
                s.split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for pid in self.pids() {
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
        let _ = wait_until(Duration::from_secs(3), || self.pids().is_empty());
        for pid in self.pids() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Creates a veth pair with one end `a_if` in `a` and the other `b_if` in `b`. Deleting either
/// namespace deletes the pair.
pub fn veth_pair(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> Result<(), CmdError> {
    run(&mut cmd(
        "ip",
        [
            "link",
            "add",
            a_if,
            "netns",
            a.name(),
            "type",
            "veth",
            "peer",
            "name",
            b_if,
            "netns",
            b.name(),
        ],
    ))?;
    Ok(())
}

/// A child process that is killed (SIGTERM, then SIGKILL) when dropped.
#[derive(Debug)]
pub struct ChildGuard {
    child: Option<Child>,
    command: String,
}

impl ChildGuard {
    /// Spawns `cmd` with stdout/stderr captured.
    pub fn spawn(mut cmd: Command) -> Result<ChildGuard, CmdError> {
        let command = command_line(&cmd);
        eprintln!("+ {command} &");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| CmdError {
                command: command.clone(),
                detail: e.to_string(),
            })?;
        Ok(ChildGuard {
            child: Some(child),
            command,
        })
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Whether the process has exited (and so reaped it).
    pub fn has_exited(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(Some(_))),
            None => true,
        }
    }

    /// Sends a signal (e.g. "TERM", "INT") to the process.
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([format!("-{sig}"), self.id().to_string()])
            .status();
    }

    /// Waits for the process to exit and returns its output (after signalling it if `kill`).
    pub fn finish(mut self, kill: bool) -> Result<Output, CmdError> {
        if kill {
            self.signal("TERM");
        }
        let child = self.child.take().ok_or_else(|| CmdError {
            command: self.command.clone(),
            detail: "already finished".into(),
        })?;
        child.wait_with_output().map_err(|e| CmdError {
            command: self.command.clone(),
            detail: e.to_string(),
        })
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if matches!(c.try_wait(), Ok(None)) {
                let _ = Command::new("kill").arg(c.id().to_string()).status();
                let deadline = Instant::now() + Duration::from_secs(2);
                while Instant::now() < deadline {
                    if matches!(c.try_wait(), Ok(Some(_))) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_fit_interface_names() {
        let a = unique_name("wg");
        let b = unique_name("wg");
        assert_ne!(a, b);
        assert!(a.len() <= 15, "{a}");
    }

    #[test]
    fn wait_until_times_out_and_succeeds() {
        assert!(wait_until(Duration::from_millis(100), || false).is_err());
        let mut n = 0;
        assert!(wait_until(Duration::from_secs(1), || {
            n += 1;
            n > 2
        })
        .is_ok());
    }

    #[test]
    fn run_error_names_command_and_stderr() {
        let e = run(&mut cmd("sh", ["-c", "echo oops >&2; exit 3"])).expect_err("fails");
        let s = e.to_string();
        assert!(s.contains("sh -c"), "{s}");
        assert!(s.contains("oops"), "{s}");
    }
}
