//! The sitelink lab: a whole network on one machine, around one "internet" (a userspace switch
//! with per-site delay) and a NAT box for sites behind NAT. Each site's router is either a QEMU
//! VM booted from the image ([`vm`], the default) or a `sitelink-router` process in a network
//! namespace ([`netns`]); the wiring around it ([`plan`]) is the same.
#![deny(unsafe_code)] // allowed only in `tap`

pub mod cmd;
pub mod netns;
pub mod plan;
pub mod switch;
mod tap;
pub mod vm;
