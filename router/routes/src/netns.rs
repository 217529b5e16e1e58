//! Network namespaces for the tests and the benchmark: run a closure on a thread that has
//! entered (or created) a namespace. Netlink sockets and `/proc/sys/net` follow the thread.

use std::fs::File;
use std::io;
use std::thread;

use nix::sched::{setns, unshare, CloneFlags};

use crate::RoutesError;

fn join<T>(h: thread::JoinHandle<Result<T, RoutesError>>, what: &str) -> Result<T, RoutesError> {
    match h.join() {
        Ok(r) => r,
        // Re-raise a panic from the closure (test assertions) in the caller.
        Err(p) => {
            log::error!("thread in network namespace {what} panicked");
            std::panic::resume_unwind(p)
        }
    }
}

/// Enter the named namespace (`/run/netns/NAME`, as made by `ip netns add NAME`) on the
/// calling thread: `ip netns exec NAME` for one thread.
pub fn enter(name: &str) -> Result<(), RoutesError> {
    let path = format!("/run/netns/{name}");
    let f = File::open(&path).map_err(|errno| RoutesError::Netns {
        what: format!("open {path}"),
        errno,
    })?;
    setns(&f, CloneFlags::CLONE_NEWNET).map_err(|e| RoutesError::Netns {
        what: format!("setns into {path}"),
        errno: io::Error::from(e),
    })
}

/// Run `f` on a new thread inside the named namespace and return its result.
pub fn run_in<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, RoutesError> {
    let owned = name.to_owned();
    let h = thread::Builder::new()
        .name(format!("netns-{name}"))
        .spawn(move || {
            enter(&owned)?;
            Ok(f())
        })
        .map_err(|errno| RoutesError::Netns {
            what: format!("spawn a thread for {name}"),
            errno,
        })?;
    join(h, name)
}

/// Run `f` on a new thread in a fresh, anonymous network namespace (`unshare -n`). The
/// namespace disappears when the thread ends and nothing else refers to it.
pub fn run_in_new<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, RoutesError> {
    let h = thread::Builder::new()
        .name("netns-new".into())
        .spawn(move || {
            unshare(CloneFlags::CLONE_NEWNET).map_err(|e| RoutesError::Netns {
                what: "unshare(CLONE_NEWNET) (needs root / CAP_SYS_ADMIN)".into(),
                errno: io::Error::from(e),
            })?;
            Ok(f())
        })
        .map_err(|errno| RoutesError::Netns {
            what: "spawn a thread".into(),
            errno,
        })?;
    join(h, "(new)")
}
