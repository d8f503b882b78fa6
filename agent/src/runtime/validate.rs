//! Checks of request fields that are judged before any side effect. Each returns a message
//! naming the field; callers turn it into InvalidArgument.

use super::spec::Resources;
use crate::cni::PortMapping;

/// The most a hostname may have: the kernel's limit for sethostname (HOST_NAME_MAX).
pub const HOSTNAME_MAX: usize = 64;

/// A hostname the kernel takes and that is safe in /etc/hosts: 1 to 64 bytes of letters,
/// digits, '-', '_' and '.', starting with a letter or digit.
pub fn hostname(h: &str) -> Result<(), String> {
    if h.len() > HOSTNAME_MAX {
        return Err(format!("hostname is {} bytes long, the most is {HOSTNAME_MAX}: {:?}", h.len(), bounded(h)));
    }
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if h.is_empty() || !h.chars().all(ok_char) || !h.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(format!(
            "hostname {:?} is not a valid hostname (letters, digits, '-', '_' and '.', starting with a letter or digit)",
            bounded(h)
        ));
    }
    Ok(())
}

/// The mappings that ask for a host port, checked. Kubelet sends every declared container port;
/// those with `host_port` 0 ask for nothing on the host and are left out (as containerd does).
pub fn port_mappings(mappings: &[PortMapping]) -> Result<Vec<PortMapping>, String> {
    let mut out = Vec::new();
    for (i, p) in mappings.iter().enumerate() {
        if p.host_port == 0 {
            continue;
        }
        let field = format!("port_mappings[{i}]");
        if !(1..=65535).contains(&p.host_port) {
            return Err(format!("{field}.host_port {} is not a port (1 to 65535, or 0 for none)", p.host_port));
        }
        if !(1..=65535).contains(&p.container_port) {
            return Err(format!("{field}.container_port {} is not a port (1 to 65535)", p.container_port));
        }
        if !p.host_ip.is_empty() && p.host_ip.parse::<std::net::IpAddr>().is_err() {
            return Err(format!("{field}.host_ip {:?} is not an IP address", bounded(&p.host_ip)));
        }
        out.push(p.clone());
    }
    Ok(out)
}

/// A sysctl key and value: dotted names of letters, digits, '_' and '-' (never a path), and a
/// value on one line.
pub fn sysctl(key: &str, value: &str) -> Result<(), String> {
    let ok_segment = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'));
    if !key.split('.').all(ok_segment) {
        return Err(format!("sysctl {:?} is not a sysctl name", bounded(key)));
    }
    if value.contains(['\n', '\0']) {
        return Err(format!("sysctl {key}: the value {:?} spans lines", bounded(value)));
    }
    Ok(())
}

/// Resource limits the kernel could take: no negative amounts, a CFS quota of at least 1 ms
/// (or -1, unlimited) and a period between 1 ms and 1 s, cpusets as lists of ranges.
pub fn resources(r: &Resources) -> Result<(), String> {
    for (field, v) in
        [("cpu_shares", r.cpu_shares), ("memory_limit_in_bytes", r.memory_limit), ("cpu_period", r.cpu_period)]
    {
        if v < 0 {
            return Err(format!("resources.{field} {v} is negative"));
        }
    }
    if r.cpu_period != 0 && !(1_000..=1_000_000).contains(&r.cpu_period) {
        return Err(format!("resources.cpu_period {} is not between 1000 and 1000000 (µs)", r.cpu_period));
    }
    if r.cpu_quota != 0 && r.cpu_quota != -1 && r.cpu_quota < 1_000 {
        return Err(format!("resources.cpu_quota {} is below 1000 µs (or -1 for none)", r.cpu_quota));
    }
    if !(-1000..=1000).contains(&r.oom_score_adj) {
        return Err(format!("resources.oom_score_adj {} is not between -1000 and 1000", r.oom_score_adj));
    }
    for (field, v) in [("cpuset_cpus", &r.cpuset_cpus), ("cpuset_mems", &r.cpuset_mems)] {
        let range = |s: &str| {
            let mut ends = s.splitn(2, '-');
            ends.all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        };
        if !v.is_empty() && !v.split(',').all(range) {
            return Err(format!("resources.{field} {:?} is not a list of CPU or node ranges like 0-3,6", bounded(v)));
        }
    }
    for size in r.hugepage_limits.keys() {
        let digits = ["KB", "MB", "GB"].iter().find_map(|u| size.strip_suffix(u));
        if !digits.is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit())) {
            return Err(format!("resources.hugepage_limits: page size {:?} is not like 2MB or 1GB", bounded(size)));
        }
    }
    for (key, value) in &r.unified {
        let Some((controller, file)) = key.split_once('.') else {
            return Err(format!("resources.unified: {:?} is not a cgroup file name like memory.high", bounded(key)));
        };
        let plain = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.');
        if !plain(controller) || !plain(file) {
            return Err(format!("resources.unified: {:?} is not a cgroup file name like memory.high", bounded(key)));
        }
        if controller == "cgroup" {
            return Err(format!("resources.unified: {key} is the cgroup's own interface, not a limit"));
        }
        if value.contains(['\n', '\0']) {
            return Err(format!("resources.unified: the value of {key} spans lines"));
        }
    }
    Ok(())
}

/// Limits this host's cgroups can take: `unified` keys only on cgroup v2 (runc refuses them on
/// v1 too).
pub fn resources_on(r: &Resources, version: Option<common::cgroup::Version>) -> Result<(), String> {
    match r.unified.keys().next() {
        Some(key) if version != Some(common::cgroup::Version::V2) => Err(format!(
            "resources.unified: {key} needs cgroup v2, and this node runs {}",
            if version.is_some() { "cgroup v1" } else { "without cgroups" }
        )),
        _ => Ok(()),
    }
}

/// The longest metadata name, namespace or uid taken (a Kubernetes name is at most 253).
pub const NAME_MAX: usize = 253;

/// A metadata field (name, namespace, uid): at most 253 bytes, no control character (a NUL or a
/// newline would break the files and CNI arguments the names end up in).
pub fn name(field: &str, v: &str) -> Result<(), String> {
    if v.len() > NAME_MAX {
        return Err(format!("{field} is {} bytes long, the most is {NAME_MAX}: {:?}", v.len(), bounded(v)));
    }
    if v.chars().any(char::is_control) {
        return Err(format!("{field} {:?} holds a control character", bounded(v)));
    }
    Ok(())
}

/// A path that is absolute (or relative, per `absolute`), without `..` and without a control
/// character.
fn plain_path(field: &str, p: &str, absolute: bool) -> Result<(), String> {
    if p.chars().any(char::is_control) {
        return Err(format!("{field} {:?} holds a control character", bounded(p)));
    }
    if p.starts_with('/') != absolute {
        let want = if absolute { "an absolute path" } else { "a relative path" };
        return Err(format!("{field} {:?} must be {want}", bounded(p)));
    }
    if std::path::Path::new(p).components().any(|c| c == std::path::Component::ParentDir) {
        return Err(format!("{field} {:?} must not hold '..'", bounded(p)));
    }
    Ok(())
}

/// linux.cgroup_parent for the cgroupfs driver: an absolute cgroup path without `..`, so it
/// stays inside the cgroup hierarchies.
pub fn cgroup_parent(p: &str) -> Result<(), String> {
    plain_path("linux.cgroup_parent", p, true)
}

/// log_directory: absolute, without `..`.
pub fn log_directory(p: &str) -> Result<(), String> {
    plain_path("log_directory", p, true)
}

/// log_path: relative to the pod's log directory and inside it (no `..`).
pub fn log_path(p: &str) -> Result<(), String> {
    plain_path("log_path", p, false)
}

/// The first 256 characters of a value quoted in an error message.
pub fn bounded(s: &str) -> String {
    const MAX: usize = 256;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pm(host_port: i32, container_port: i32, host_ip: &str) -> PortMapping {
        PortMapping { host_port, container_port, protocol: "tcp".into(), host_ip: host_ip.into() }
    }

    #[test]
    fn hostnames() {
        for ok in ["a", "web-0", "pod.ns.svc", "Mixed_Case-1", &"h".repeat(64)] {
            assert!(hostname(ok).is_ok(), "{ok}");
        }
        let long = hostname(&"p".repeat(68)).unwrap_err();
        assert!(long.contains("hostname") && long.contains("68"), "{long}");
        for bad in ["", "-lead", ".lead", "new\nline", "sp ace", "a/b", "ü"] {
            let e = hostname(bad).unwrap_err();
            assert!(e.contains("hostname"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn port_mappings_without_host_port_are_left_out() {
        let kept =
            port_mappings(&[pm(0, 80, ""), pm(8080, 80, ""), pm(0, 443, ""), pm(9090, 90, "127.0.0.1")]).unwrap();
        assert_eq!(kept, vec![pm(8080, 80, ""), pm(9090, 90, "127.0.0.1")]);
        assert!(port_mappings(&[pm(0, 80, ""), pm(0, 0, "")]).unwrap().is_empty());
    }

    #[test]
    fn bad_port_mappings_name_the_field() {
        assert!(port_mappings(&[pm(0, 80, ""), pm(70000, 80, "")]).unwrap_err().contains("port_mappings[1].host_port"));
        assert!(port_mappings(&[pm(-1, 80, "")]).unwrap_err().contains("port_mappings[0].host_port"));
        assert!(port_mappings(&[pm(80, 0, "")]).unwrap_err().contains("port_mappings[0].container_port"));
        assert!(port_mappings(&[pm(80, 80, "not-an-ip")]).unwrap_err().contains("port_mappings[0].host_ip"));
    }

    #[test]
    fn sysctls() {
        assert!(sysctl("net.ipv4.ip_unprivileged_port_start", "0").is_ok());
        assert!(sysctl("net.ipv4.ping_group_range", "0 2147483647").is_ok());
        for bad in ["net/ipv4/x", "net..x", "../../etc", "", "net.ipv4.x\n"] {
            assert!(sysctl(bad, "1").is_err(), "{bad:?}");
        }
        assert!(sysctl("net.core.somaxconn", "1\nkernel.x=1").is_err());
    }

    #[test]
    fn hugepages_and_unified_keys() {
        use common::cgroup::Version;
        let with = |sizes: &[&str], keys: &[(&str, &str)]| Resources {
            hugepage_limits: sizes.iter().map(|s| (s.to_string(), 1 << 21)).collect(),
            unified: keys.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Default::default()
        };
        assert!(
            resources(&with(&["2MB", "1GB", "64KB"], &[("memory.high", "1G"), ("io.weight", "default 100")])).is_ok()
        );
        for size in ["2M", "MB", "2 MB", "../2MB", "2mb"] {
            assert!(resources(&with(&[size], &[])).unwrap_err().contains("page size"), "{size}");
        }
        for key in ["memory", "../memory.max", "memory/x.max", "cgroup.procs", "cgroup.subtree_control", ".max"] {
            assert!(resources(&with(&[], &[(key, "1")])).unwrap_err().contains("resources.unified"), "{key}");
        }
        assert!(resources(&with(&[], &[("memory.high", "1\n2")])).unwrap_err().contains("spans lines"));
        // unified keys only where cgroup v2 runs.
        let u = with(&[], &[("memory.low", "1")]);
        assert!(resources_on(&u, Some(Version::V2)).is_ok());
        assert!(resources_on(&u, Some(Version::V1)).unwrap_err().contains("needs cgroup v2"));
        assert!(resources_on(&u, None).unwrap_err().contains("without cgroups"));
        assert!(resources_on(&with(&["2MB"], &[]), Some(Version::V1)).is_ok());
    }

    #[test]
    fn resource_limits() {
        assert!(resources(&Resources::default()).is_ok());
        let ok = Resources {
            cpu_shares: 2,
            cpu_quota: 50_000,
            cpu_period: 100_000,
            memory_limit: 1 << 20,
            cpuset_cpus: "0-1,3".into(),
            oom_score_adj: -998,
            ..Default::default()
        };
        assert!(resources(&ok).is_ok());
        assert!(resources(&Resources { cpu_quota: -1, ..Default::default() }).is_ok());
        for (bad, field) in [
            (Resources { memory_limit: -5, ..Default::default() }, "memory_limit_in_bytes"),
            (Resources { cpu_period: 10, ..Default::default() }, "cpu_period"),
            (Resources { cpu_quota: 10, ..Default::default() }, "cpu_quota"),
            (Resources { oom_score_adj: 1001, ..Default::default() }, "oom_score_adj"),
            (Resources { cpuset_cpus: "0-".into(), ..Default::default() }, "cpuset_cpus"),
            (Resources { cpuset_mems: "a".into(), ..Default::default() }, "cpuset_mems"),
        ] {
            assert!(resources(&bad).unwrap_err().contains(field), "{field}");
        }
    }

    #[test]
    fn names_and_paths() {
        assert!(name("metadata.name", &"p".repeat(253)).is_ok());
        assert!(name("metadata.name", &"p".repeat(254)).unwrap_err().contains("metadata.name"));
        assert!(name("metadata.name", "a\0b").unwrap_err().contains("control"));
        assert!(name("metadata.uid", "a\nb").is_err());
        assert!(cgroup_parent("/kubepods/besteffort/pod1").is_ok());
        for bad in ["/../../../../../../tmp/x", "kubepods", "/a/../b", "/a\nb"] {
            assert!(cgroup_parent(bad).unwrap_err().contains("linux.cgroup_parent"), "{bad:?}");
        }
        assert!(log_directory("/var/log/pods/ns_pod_uid").is_ok());
        assert!(log_directory("relative").is_err() && log_directory("/var/log/../../etc").is_err());
        assert!(log_path("app/0.log").is_ok());
        for bad in ["/etc/cron.d/x", "../../etc/x", "a/../../x", "x\0"] {
            assert!(log_path(bad).unwrap_err().contains("log_path"), "{bad:?}");
        }
    }

    #[test]
    fn bounded_quotes() {
        assert_eq!(bounded("abc"), "abc");
        let b = bounded(&"x".repeat(100_000));
        assert!(b.chars().count() == 257 && b.ends_with('…'));
    }
}
