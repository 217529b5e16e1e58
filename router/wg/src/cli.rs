//! The WireGuard cross-platform userspace process contract:
//! `sitelink-wg [-f|--foreground] IFNAME` creates TUN IFNAME, serves
//! `/var/run/wireguard/IFNAME.sock`, forks into the background unless `-f` (or
//! `WG_PROCESS_FOREGROUND=1`), and exits cleanly on SIGINT/SIGTERM, when the TUN is deleted or
//! the socket file is removed, removing its socket on the way out.

use std::process::ExitCode;
use std::time::Duration;

use crate::device::Prepared;
use crate::sys;

struct StderrLogger {
    level: log::LevelFilter,
    prefix: &'static str,
}

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            eprintln!(
                "{}{}: {}",
                self.prefix,
                record.level().as_str().to_lowercase(),
                record.args()
            );
        }
    }

    fn flush(&self) {}
}

/// Installs a stderr logger; `LOG_LEVEL` (error, warn, info, debug, verbose, trace) picks the
/// level, as with wireguard-go. Calling it twice is harmless.
pub fn init_logging() {
    init_logging_with_prefix("sitelink-wg: ");
}

/// [`init_logging`] with another line prefix (the device binary's site mode uses none: its
/// supervisor tags lines with the service name).
pub fn init_logging_with_prefix(prefix: &'static str) {
    let level = match std::env::var("LOG_LEVEL").unwrap_or_default().as_str() {
        "error" | "silent" => log::LevelFilter::Error,
        "debug" | "verbose" => log::LevelFilter::Debug,
        "trace" => log::LevelFilter::Trace,
        "warn" => log::LevelFilter::Warn,
        _ => log::LevelFilter::Info,
    };
    let logger = Box::leak(Box::new(StderrLogger { level, prefix }));
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level);
    }
}

fn usage(prog: &str) -> ExitCode {
    eprintln!("Usage: {prog} [-f/--foreground] INTERFACE-NAME");
    ExitCode::from(1)
}

/// Runs the userspace contract with `args` (without the program name). `prog` is used in
/// messages.
pub fn run(prog: &str, args: &[String]) -> ExitCode {
    let mut foreground = std::env::var("WG_PROCESS_FOREGROUND").as_deref() == Ok("1");
    let mut name = None;
    for a in args {
        match a.as_str() {
            "-f" | "--foreground" => foreground = true,
            "-h" | "--help" => return usage(prog),
            s if s.starts_with('-') => return usage(prog),
            s if name.is_none() => name = Some(s.to_string()),
            _ => return usage(prog),
        }
    }
    let Some(name) = name else { return usage(prog) };
    init_logging();
    let prepared = match Prepared::new(&name) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{prog}: {e}");
            return ExitCode::from(1);
        }
    };
    if !foreground {
        match sys::daemonize() {
            // The child owns the TUN and the sockets now; the parent leaves without cleanup.
            Ok(true) => sys::exit_now(0),
            Ok(false) => {}
            Err(e) => {
                eprintln!("{prog}: cannot fork into the background: {e}");
                return ExitCode::from(1);
            }
        }
    }
    if let Err(e) = sys::block_termination_signals() {
        eprintln!("{prog}: cannot block signals: {e}");
        return ExitCode::from(1);
    }
    let device = match prepared.start() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("{prog}: {e}");
            return ExitCode::from(1);
        }
    };
    loop {
        if let Some(sig) = sys::wait_termination_signal(Duration::from_millis(200)) {
            log::info!("{name}: signal {sig}, shutting down");
            break;
        }
        if let Some(reason) = device.stopped() {
            log::info!("{name}: stopping: {reason:?}");
            break;
        }
    }
    device.stop();
    ExitCode::SUCCESS
}
