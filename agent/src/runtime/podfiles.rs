//! The files every container of a pod mounts: /etc/hosts, /etc/resolv.conf, /etc/hostname.

use std::io;
use std::path::Path;

pub const HOSTS: &str = "hosts";
pub const RESOLV: &str = "resolv.conf";
pub const HOSTNAME: &str = "hostname";

/// DNS settings from the CRI DNSConfig.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dns {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

pub fn hosts(hostname: &str, ips: &[String]) -> String {
    let mut out = String::from(
        "# Kubernetes-managed hosts file (corral).\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
    );
    for ip in ips {
        out.push_str(&format!("{ip}\t{hostname}\n"));
    }
    out
}

pub fn resolv_conf(dns: &Dns) -> String {
    let mut out = String::new();
    if !dns.searches.is_empty() {
        out.push_str(&format!("search {}\n", dns.searches.join(" ")));
    }
    for s in &dns.servers {
        out.push_str(&format!("nameserver {s}\n"));
    }
    if !dns.options.is_empty() {
        out.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    out
}

/// Writes the three files into `dir`: resolv.conf from `dns`, or the host's when `dns` is None;
/// /etc/hosts with the pod's IPs, or the host's for a host-network pod.
pub fn write(dir: &Path, hostname: &str, dns: Option<&Dns>, host_network: bool, ips: &[String]) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let hosts_content = if host_network {
        std::fs::read_to_string("/etc/hosts").unwrap_or_else(|_| hosts(hostname, ips))
    } else {
        hosts(hostname, ips)
    };
    std::fs::write(dir.join(HOSTS), hosts_content)?;
    let resolv = match dns {
        Some(d) => resolv_conf(d),
        None => std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
    };
    std::fs::write(dir.join(RESOLV), resolv)?;
    std::fs::write(dir.join(HOSTNAME), format!("{hostname}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_from_dns_config() {
        let dns = Dns {
            servers: vec!["10.0.0.10".into()],
            searches: vec!["ns.svc.cluster.local".into(), "svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        };
        assert_eq!(
            resolv_conf(&dns),
            "search ns.svc.cluster.local svc.cluster.local\nnameserver 10.0.0.10\noptions ndots:5\n"
        );
    }

    #[test]
    fn hosts_lists_pod_ips() {
        let h = hosts("web", &["10.1.0.5".into()]);
        assert!(h.contains("127.0.0.1\tlocalhost\n") && h.ends_with("10.1.0.5\tweb\n"));
    }
}
