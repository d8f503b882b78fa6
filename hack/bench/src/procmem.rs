//! Processes and their memory: RSS and PSS from `/proc/<pid>/smaps_rollup`, and finding a
//! runtime's shims by program name (and a string their command line must contain, so that
//! another instance's shims on the same machine are not counted).

use std::path::Path;

/// Resident and proportional set size in KiB.
#[derive(Debug, Default, Clone, Copy)]
pub struct Mem {
    pub rss_kib: u64,
    pub pss_kib: u64,
}

impl std::ops::AddAssign for Mem {
    fn add_assign(&mut self, o: Mem) {
        self.rss_kib += o.rss_kib;
        self.pss_kib += o.pss_kib;
    }
}

/// The memory of `pid`, or `None` when it is gone (or not readable).
pub fn mem(pid: u32) -> Option<Mem> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let field = |key: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(key))?;
        line[key.len()..].split_whitespace().next()?.parse().ok()
    };
    Some(Mem { rss_kib: field("Rss:")?, pss_kib: field("Pss:")? })
}

/// The arguments of `pid`, or `None` when it is gone or a kernel thread.
pub fn cmdline(pid: u32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    if raw.is_empty() {
        return None;
    }
    Some(raw.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect())
}

fn pids() -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect()
}

/// Processes whose program (argv[0]'s file name) is `name` and whose command line contains
/// `needle` (when given).
pub fn find(name: &str, needle: Option<&str>) -> Vec<u32> {
    let mut out: Vec<u32> = pids()
        .into_iter()
        .filter(|pid| {
            let Some(args) = cmdline(*pid) else {
                return false;
            };
            let prog = Path::new(&args[0]).file_name().and_then(|f| f.to_str()).unwrap_or_default();
            prog == name && needle.is_none_or(|n| args.iter().any(|a| a.contains(n)))
        })
        .collect();
    out.sort_unstable();
    out
}

/// The summed memory of `pids` (those still alive) and how many were counted.
pub fn total(pids: &[u32]) -> (Mem, usize) {
    let mut sum = Mem::default();
    let mut n = 0;
    for m in pids.iter().filter_map(|p| mem(*p)) {
        sum += m;
        n += 1;
    }
    (sum, n)
}

/// CPU time `pid` has used so far (every thread's, from `/proc/<pid>/task/*/schedstat`, in ns),
/// or `None` when it is gone. Threads that already exited are not counted.
pub fn cpu_ns(pid: u32) -> Option<u64> {
    let rd = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut sum = 0;
    for t in rd.flatten() {
        if let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) {
            sum += s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    Some(sum)
}

pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_memory_and_name() {
        let me = std::process::id();
        let m = mem(me).expect("smaps_rollup of self");
        assert!(m.rss_kib > 0 && m.pss_kib > 0 && m.pss_kib <= m.rss_kib);
        let args = cmdline(me).unwrap();
        let prog = Path::new(&args[0]).file_name().unwrap().to_str().unwrap().to_string();
        assert!(find(&prog, None).contains(&me));
        assert!(!find(&prog, Some("no-such-argument-anywhere-\u{1}")).contains(&me));
    }
}
