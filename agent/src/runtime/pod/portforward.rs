//! PortForward: the check the RPC makes, and the connections themselves, dialled to
//! `localhost:<port>` inside the pod's network namespace (tcp4, then tcp6) from a short-lived
//! thread that enters it; no helper process. Host-network pods are dialled from corrald's own.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::Duration;

use super::*;
use crate::runtime::RuntimeError;

/// How long a connection to the pod's port may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects to `localhost:port` (127.0.0.1, then ::1), in the calling thread's netns.
fn dial_localhost(port: u16) -> std::io::Result<TcpStream> {
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    match TcpStream::connect_timeout(&v4, DIAL_TIMEOUT) {
        Ok(s) => Ok(s),
        Err(e4) => {
            TcpStream::connect_timeout(&SocketAddr::from((Ipv6Addr::LOCALHOST, port)), DIAL_TIMEOUT).map_err(|e6| {
                std::io::Error::new(e4.kind(), format!("dial tcp4 127.0.0.1:{port}: {e4}; tcp6 [::1]:{port}: {e6}"))
            })
        }
    }
}

/// Dials in the network namespace `netns` (None: corrald's own) from a thread of its own.
async fn dial_in(netns: Option<PathBuf>, port: u16) -> std::io::Result<tokio::net::TcpStream> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new().name("port-forward".into()).stack_size(128 * 1024).spawn(move || {
        let dialed = (|| {
            if let Some(path) = &netns {
                let ns = std::fs::File::open(path)?;
                crate::sys::enter_netns(ns.as_fd())?;
            }
            dial_localhost(port)
        })();
        let _ = tx.send(dialed);
    })?;
    let stream = rx.await.map_err(|_| std::io::Error::other("the dialing thread died"))??;
    stream.set_nonblocking(true)?;
    tokio::net::TcpStream::from_std(stream)
}

impl Runtime {
    /// For PortForward: the full id of `wanted`, which must exist and be ready.
    pub fn port_forward_pod(&self, wanted: &str) -> Result<String> {
        let id = self
            .find_pod_id(wanted)?
            .ok_or_else(|| RuntimeError::NotFound(format!("pod sandbox {wanted:?} not found")))?;
        let pod = self.pod(&id).ok_or_else(|| RuntimeError::NotFound(format!("pod sandbox {wanted:?} not found")))?;
        if pod.phase != PodPhase::Ready {
            return Err(RuntimeError::FailedPrecondition(format!("pod sandbox {id} is not ready")));
        }
        Ok(id)
    }

    /// A connection to `localhost:port` in the pod's network namespace.
    pub async fn dial_pod(&self, pod_id: &str, port: u16) -> Result<tokio::net::TcpStream> {
        let id = self.port_forward_pod(pod_id)?;
        let pod = self.pod(&id).ok_or_else(|| RuntimeError::NotFound(format!("pod sandbox {id} not found")))?;
        let netns = (pod.network != NsMode::Node).then(|| self.ns_dir(&id).join("net"));
        dial_in(netns, port)
            .await
            .map_err(|e| RuntimeError::Io { what: format!("port-forward to port {port} of pod {id}"), source: e })
    }
}
