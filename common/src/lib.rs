//! Knowledge corrald and corral-shim share, kept in one place so the two cannot disagree: the
//! capability table, resolving paths inside a container's root, and the cgroup version.
//! Small and dependency-free (libc only): corral-shim runs once per container.

#![deny(unsafe_code)]

pub mod caps;
pub mod cgroup;
#[allow(unsafe_code)]
pub mod fdpass;
pub mod path;
#[allow(unsafe_code)]
mod sys;
