//! corrald, the corral CRI server, as a library: the `corrald` binary runs [`daemon::main`];
//! the fuzz targets (`fuzz/`) reach the parsers and the spec resolution through [`fuzzing`].

#![deny(unsafe_code)]

mod cni;
mod config;
pub mod daemon;
mod discard;
mod image;
mod lock;
mod runtime;
mod server;
mod shim_client;
mod store;
mod streaming;
mod sys;

#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
