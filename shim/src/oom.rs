//! Telling an OOM kill of the container process from one of an exec'd process: the memory
//! cgroup's oom_kill counter must have gone up beyond the kills attributed to exec'd
//! processes, and the container process must have died of SIGKILL.

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
