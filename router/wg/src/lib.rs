//! Userspace WireGuard data plane (see ARCHITECTURE.md).
