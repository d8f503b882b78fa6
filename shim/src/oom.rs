//! Telling an OOM kill of the container process from one of an exec'd process: the memory
//! cgroup's oom_kill counter must have gone up beyond the kills attributed to exec'd
//! processes, and the container process must have died of SIGKILL.

use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The oom_kill count of a cgroup v2 `memory.events` text.
pub fn oom_kill_count(events: &str) -> Option<u64> {
    events.lines().find_map(|l| l.strip_prefix("oom_kill ")).and_then(|v| v.trim().parse().ok())
}

/// Follows a v2 cgroup's `memory.events` from a small thread: the highest oom_kill count seen
/// is kept in the returned counter, read at each change the kernel signals (POLLPRI). For a
/// cgroup systemd owns: once the container is gone systemd removes the emptied scope within
/// milliseconds, maybe before the exit is handled, and the count with it. The thread ends when
/// the file goes (POLLERR, then a failed read).
pub fn watch(events: &Path) -> std::io::Result<Arc<AtomicU64>> {
    let mut file = std::fs::File::open(events)?;
    let seen = Arc::new(AtomicU64::new(0));
    let out = seen.clone();
    std::thread::Builder::new().name("oom-watch".into()).stack_size(32 * 1024).spawn(move || {
        let mut text = String::new();
        loop {
            text.clear();
            // Reading from the start also re-arms the change notification.
            if file.seek(SeekFrom::Start(0)).and_then(|_| file.read_to_string(&mut text)).is_err() {
                return;
            }
            if let Some(n) = oom_kill_count(&text) {
                seen.fetch_max(n, Ordering::SeqCst);
            }
            match crate::sys::poll_for(&[file.as_raw_fd()], libc::POLLPRI, -1) {
                Ok(_) => {}
                Err(_) => return,
            }
        }
    })?;
    Ok(out)
}

#[derive(Debug, Default)]
pub struct OomTracker {
    /// The counter when the container was created.
    baseline: u64,
    /// OOM kills that hit exec'd processes.
    attributed: u64,
}

impl OomTracker {
    pub fn new(counter: Option<u64>) -> OomTracker {
        OomTracker { baseline: counter.unwrap_or(0), attributed: 0 }
    }

    /// An exec'd process ended; if it died of SIGKILL while the counter rose, those kills
    /// were its own.
    pub fn exec_finished(&mut self, before: Option<u64>, after: Option<u64>, signal: i32) {
        if let (Some(b), Some(a)) = (before, after) {
            if signal == libc::SIGKILL && a > b {
                self.attributed += a - b;
            }
        }
    }

    /// Whether the container process's death was an OOM kill.
    pub fn container_oom(&self, now: Option<u64>, signal: i32) -> bool {
        signal == libc::SIGKILL && now.is_some_and(|n| n > self.baseline + self.attributed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oom_kill_count_of_memory_events() {
        let text = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(oom_kill_count(text), Some(1));
        assert_eq!(oom_kill_count("oom 2\n"), None);
    }

    #[test]
    fn the_watcher_follows_a_file_and_ends_with_it() {
        // A regular file never signals a change: the first reading is what it keeps.
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("memory.events");
        std::fs::write(&f, "oom 3\noom_kill 3\n").unwrap();
        let seen = watch(&f).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while seen.load(Ordering::SeqCst) != 3 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(seen.load(Ordering::SeqCst), 3);
        assert!(watch(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn oom_of_exec_is_not_the_containers() {
        let mut t = OomTracker::new(Some(2));
        assert!(!t.container_oom(Some(2), libc::SIGKILL));
        assert!(t.container_oom(Some(3), libc::SIGKILL));
        assert!(!t.container_oom(Some(3), libc::SIGTERM));
        t.exec_finished(Some(2), Some(3), libc::SIGKILL);
        assert!(!t.container_oom(Some(3), libc::SIGKILL));
        assert!(t.container_oom(Some(4), libc::SIGKILL));
        // An exec that exited normally claims nothing.
        t.exec_finished(Some(4), Some(5), 0);
        assert!(t.container_oom(Some(5), libc::SIGKILL));
        assert!(!t.container_oom(None, libc::SIGKILL));
    }
}
