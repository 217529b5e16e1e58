//! Errors, named for the operation that failed.

use std::io;

/// Why the route installer could not do something. Every message names the operation (as its
/// `ip ...` equivalent), the prefix or interface, and the kernel's errno text.
#[derive(Debug, thiserror::Error)]
pub enum RoutesError {
    /// The netlink socket could not be opened.
    #[error("cannot open a NETLINK_ROUTE socket: {0}")]
    Socket(#[source] io::Error),
    /// A netlink request was refused by the kernel (or could not be sent).
    #[error("`{op}` failed: {errno}")]
    Netlink {
        /// The operation as its `ip` command.
        op: String,
        /// The errno as text (e.g. "Invalid argument (os error 22)").
        errno: io::Error,
    },
    /// A dump (`ip route show` ...) failed.
    #[error("`{op}` (netlink dump) failed: {errno}")]
    Dump { op: String, errno: io::Error },
    /// A tunnel interface the config names is missing.
    #[error("interface {name} does not exist: the data plane (`sitelink-router wg {name}`) must create it before its routes and addresses can be installed; nothing was changed")]
    MissingInterface { name: String },
    /// A tunnel interface exists but is not a kind of device we manage.
    #[error("interface {name} exists but is a {kind} device, not a tunnel this router manages (accepted kinds: {accepted}); refusing to touch it, nothing was changed")]
    ForeignInterface {
        name: String,
        kind: String,
        accepted: String,
    },
    /// The desired state is inconsistent (e.g. the direct table equals the route table).
    #[error("invalid desired state: {0}")]
    Invalid(String),
    /// A sysctl could not be written.
    #[error("cannot set sysctl {path} = {value}: {errno}")]
    Sysctl {
        path: String,
        value: String,
        errno: io::Error,
    },
    /// Some operations of an apply failed (the others were done).
    #[error("{failed} of {total} netlink operations failed; first: {first}")]
    Partial {
        failed: usize,
        total: usize,
        first: Box<RoutesError>,
    },
    /// Entering or creating a network namespace failed.
    #[error("network namespace {what}: {errno}")]
    Netns { what: String, errno: io::Error },
    /// Writing the status file failed.
    #[error("status file {path}: {errno}")]
    Status { path: String, errno: io::Error },
}

impl RoutesError {
    pub(crate) fn netlink(op: impl Into<String>, errno: io::Error) -> Self {
        RoutesError::Netlink {
            op: op.into(),
            errno,
        }
    }
}
