//! Knowledge corrald and corral-shim share, kept in one place so the two cannot disagree: the
//! capability table, resolving paths inside a container's root, and the cgroup version.
//! Small, with few dependencies (libc, thiserror): corral-shim runs once per container.

#![deny(unsafe_code)]

pub mod caps;
pub mod cgroup;
pub mod dbus;
#[allow(unsafe_code)]
pub mod fdpass;
pub mod path;
#[allow(unsafe_code)]
mod sys;
pub mod systemd;
