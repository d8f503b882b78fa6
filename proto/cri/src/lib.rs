//! The Kubernetes Container Runtime Interface, package `runtime.v1`, as of Kubernetes 1.36.
//!
//! Generated with tonic from corral's copy of the API in `api.proto`, which matches upstream on
//! the wire. [`v1`] holds the messages, `runtime_service_{client,server}` and
//! `image_service_{client,server}`.
#![deny(unsafe_code)]

/// The `runtime.v1` package: messages, and client and server for RuntimeService and ImageService.
#[allow(clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("runtime.v1");
}
