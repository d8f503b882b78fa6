//! Linux capabilities: names and numbers (linux/capability.h), and containerd's default set.

/// Capability names by number, without the `CAP_` prefix.
pub const NAMES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// containerd's default capability set (what a container gets unless it adds or drops).
pub const DEFAULT: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// The number of a capability name, with or without `CAP_`, any case ("CAP_CHOWN", "chown").
pub fn number(name: &str) -> Option<u32> {
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    NAMES.iter().position(|n| *n == bare).map(|i| i as u32)
}

/// The `CAP_` name of a capability number (`CAP_<n>` for one this table does not know).
pub fn name(n: u32) -> String {
    match NAMES.get(n as usize) {
        Some(bare) => format!("CAP_{bare}"),
        None => format!("CAP_{n}"),
    }
}

/// A capability name in its canonical form: `net_admin` → `CAP_NET_ADMIN`; None when unknown.
pub fn normalize(name: &str) -> Option<String> {
    number(name).map(self::name)
}

/// Every capability up to `last` (the kernel's cap_last_cap), by name.
pub fn all_up_to(last: u32) -> Vec<String> {
    (0..=last.min(NAMES.len() as u32 - 1)).map(name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers() {
        assert_eq!(number("CAP_CHOWN"), Some(0));
        assert_eq!(number("sys_admin"), Some(21));
        assert_eq!(number("CAP_CHECKPOINT_RESTORE"), Some(40));
        assert_eq!(number("CAP_NOPE"), None);
        assert_eq!(name(21), "CAP_SYS_ADMIN");
        assert_eq!(name(63), "CAP_63");
        assert_eq!(normalize("net_admin").as_deref(), Some("CAP_NET_ADMIN"));
        assert_eq!(all_up_to(40).len(), 41);
        assert_eq!(all_up_to(63).len(), 41);
        assert!(DEFAULT.iter().all(|c| number(c).is_some()));
    }
}
