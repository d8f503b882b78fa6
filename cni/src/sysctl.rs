//! The few sysctls the plugin sets: IP forwarding and route_localnet on the bridge.

use std::fs;

use crate::spec::{code, CniError};

/// Writes `value` unless the key already has it.
pub fn ensure(key: &str, value: &str) -> Result<(), CniError> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    if fs::read_to_string(&path).map(|v| v.trim() == value).unwrap_or(false) {
        return Ok(());
    }
    fs::write(&path, value).map_err(|e| CniError::new(code::IO, format!("set sysctl {key}={value}: {e}")))
}

/// `net.ipv4.conf.<ifname>.<key>`; interface names may contain dots, so no key syntax here.
pub fn ensure_iface(family: &str, ifname: &str, key: &str, value: &str) -> Result<(), CniError> {
    let path = format!("/proc/sys/net/{family}/conf/{ifname}/{key}");
    if fs::read_to_string(&path).map(|v| v.trim() == value).unwrap_or(false) {
        return Ok(());
    }
    fs::write(&path, value).map_err(|e| CniError::new(code::IO, format!("set {path}={value}: {e}")))
}
