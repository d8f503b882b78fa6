//! How each module's errors map onto the spec's error codes.

use crate::spec::{code, CniError};
use crate::{iptables, netlink, netns};

impl From<netns::Error> for CniError {
    fn from(e: netns::Error) -> Self {
        let c = match e {
            netns::Error::Missing(_) => code::UNKNOWN_CONTAINER,
            netns::Error::NotNamespace(_) => code::INVALID_ENV,
            netns::Error::Io(..) | netns::Error::Enter(..) => code::IO,
        };
        CniError::new(c, format!("CNI_NETNS: {e}"))
    }
}

impl From<netlink::Error> for CniError {
    fn from(e: netlink::Error) -> Self {
        match e {
            netlink::Error::Netns(n) => n.into(),
            e => CniError::new(code::INTERNAL, e.to_string()),
        }
    }
}

/// Maps an I/O error to the spec's IO code, prefixed with what was being done.
pub fn io(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> CniError {
    let what = what.to_string();
    move |e| CniError::new(code::IO, format!("{what}: {e}"))
}

impl From<iptables::Error> for CniError {
    fn from(e: iptables::Error) -> Self {
        CniError::new(code::INTERNAL, e.to_string())
    }
}
