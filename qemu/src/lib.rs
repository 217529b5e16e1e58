//! The sitelink lab: a whole network on one machine. Namespace mode builds each site's router
//! and LAN host as network namespaces around one "internet" (a userspace switch with per-site delay)
//! and a NAT box for sites behind NAT.
#![deny(unsafe_code)] // allowed only in `tap`

pub mod cmd;
pub mod netns;
pub mod plan;
pub mod switch;
mod tap;
