//! Where the reaper sends the exit status of an exec'd command. The command is a child of the
//! shim itself (the exec's first child clones it with CLONE_PARENT and exits), so the shim's
//! reaper reaps it, and the first child too; each exec registers here, before its first child
//! is forked, a sink for the command's wait status (exec: the EXIT record on its status pipe,
//! whose write end the sink holds and closes when dropped).
//!
//! The first child's pid is known once fork returns and the command's once the exec read it:
//! either may already have been reaped by then. While an exec waits for one of them, the reaper
//! keeps the statuses of the pids it cannot place (with the reap's sequence number, so an exec
//! only takes one reaped after it registered) for the exec to find.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// Unplaced statuses kept at most, beyond which the oldest go.
const UNCLAIMED_MAX: usize = 1024;

#[derive(Default)]
pub struct Registry {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Reaps so far.
    seq: u64,
    next_id: u64,
    execs: HashMap<u64, Entry>,
    /// (pid, seq, status) of reaped pids no exec claimed yet, while an exec waits for a pid.
    unclaimed: Vec<(i32, u64, i32)>,
}

/// Takes the command's wait status.
pub type Sink = Box<dyn FnOnce(i32) + Send>;

struct Entry {
    /// `seq` when registered.
    start: u64,
    sink: Sink,
    first: Option<i32>,
    command: Option<i32>,
}

impl Entry {
    fn waits_for_a_pid(&self) -> bool {
        self.first.is_none() || self.command.is_none()
    }
}

impl Inner {
    /// The unclaimed status of `pid` reaped after `start`.
    fn take_unclaimed(&mut self, pid: i32, start: u64) -> Option<i32> {
        let i = self.unclaimed.iter().position(|&(p, seq, _)| p == pid && seq > start)?;
        Some(self.unclaimed.remove(i).2)
    }

    /// The first child of `id` exited: a clean exit follows its report of the command's pid (the
    /// command is then the shim's) or its relay of the command's status; otherwise it failed and
    /// no status will come (the sink is dropped unused).
    fn first_exited(&mut self, id: u64, status: i32) {
        if status != 0 {
            self.execs.remove(&id);
        }
    }

    fn command_exited(&mut self, id: u64, status: i32) {
        if let Some(e) = self.execs.remove(&id) {
            (e.sink)(status);
        }
    }

    /// Drops the statuses no waiting exec can claim any more.
    fn prune(&mut self) {
        match self.execs.values().filter(|e| e.waits_for_a_pid()).map(|e| e.start).min() {
            None => self.unclaimed.clear(),
            Some(oldest) => self.unclaimed.retain(|&(_, seq, _)| seq > oldest),
        }
        let excess = self.unclaimed.len().saturating_sub(UNCLAIMED_MAX);
        self.unclaimed.drain(..excess);
    }
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers an exec about to fork its first child.
    pub fn register(self: &Arc<Self>, sink: Sink) -> Tracked {
        let mut i = self.lock();
        let id = i.next_id;
        i.next_id += 1;
        let start = i.seq;
        i.execs.insert(id, Entry { start, sink, first: None, command: None });
        Tracked { registry: self.clone(), id }
    }

    /// A child was reaped; true when it was an exec's.
    pub fn reaped(&self, pid: i32, status: i32) -> bool {
        let mut i = self.lock();
        i.seq += 1;
        let seq = i.seq;
        let first = i.execs.iter().find(|(_, e)| e.first == Some(pid)).map(|(id, _)| *id);
        if let Some(id) = first {
            i.first_exited(id, status);
        } else if let Some(id) = i.execs.iter().find(|(_, e)| e.command == Some(pid)).map(|(id, _)| *id) {
            i.command_exited(id, status);
        } else {
            if i.execs.values().any(Entry::waits_for_a_pid) {
                i.unclaimed.push((pid, seq, status));
            }
            i.prune();
            return false;
        }
        i.prune();
        true
    }
}

/// An exec's registration; dropping it forgets the exec (and drops its sink).
pub struct Tracked {
    registry: Arc<Registry>,
    id: u64,
}

impl Tracked {
    /// The first child's pid, once forked.
    pub fn first(&self, pid: i32) {
        let mut i = self.registry.lock();
        let Some(e) = i.execs.get_mut(&self.id) else { return };
        e.first = Some(pid);
        let start = e.start;
        if let Some(status) = i.take_unclaimed(pid, start) {
            i.first_exited(self.id, status);
        }
        i.prune();
    }

    /// The command's pid; `relayed`: the first child is its parent and relays its status
    /// itself (the fallback without CLONE_PARENT): the sink is dropped.
    pub fn command(&self, pid: i32, relayed: bool) {
        let mut i = self.registry.lock();
        if relayed {
            i.execs.remove(&self.id);
        } else if let Some(e) = i.execs.get_mut(&self.id) {
            e.command = Some(pid);
            let start = e.start;
            if let Some(status) = i.take_unclaimed(pid, start) {
                i.command_exited(self.id, status);
            }
        }
        i.prune();
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let mut i = self.registry.lock();
        i.execs.remove(&self.id);
        i.prune();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Got = Arc<Mutex<Vec<i32>>>;

    /// A sink recording the status, and what it got.
    fn sink() -> (Sink, Got) {
        let got = Got::default();
        let g = got.clone();
        (Box::new(move |s| g.lock().unwrap().push(s)), got)
    }

    fn empty(reg: &Registry) -> bool {
        let i = reg.lock();
        i.execs.is_empty() && i.unclaimed.is_empty()
    }

    #[test]
    fn statuses_reach_their_exec_whatever_the_order() {
        let reg = Arc::new(Registry::default());
        // Reaped after their pids were known.
        let (s, got) = sink();
        let t = reg.register(s);
        t.first(100);
        assert!(reg.reaped(100, 0));
        t.command(101, false);
        assert!(reg.reaped(101, 3 << 8));
        assert!(empty(&reg));
        drop(t);
        assert_eq!(*got.lock().unwrap(), [3 << 8]);

        // Reaped before: kept for the exec, which takes them.
        let (s, got) = sink();
        let t = reg.register(s);
        assert!(!reg.reaped(201, 9));
        assert!(!reg.reaped(200, 0));
        t.first(200);
        t.command(201, false);
        assert!(empty(&reg));
        assert_eq!(*got.lock().unwrap(), [9]);
    }

    #[test]
    fn old_statuses_failures_and_relays_are_not_taken() {
        let reg = Arc::new(Registry::default());
        let waiting = reg.register(sink().0);
        // Reaped before the exec registered: not its command.
        assert!(!reg.reaped(301, 0));
        let (s, got) = sink();
        let t = reg.register(s);
        t.first(300);
        t.command(301, false);
        assert!(reg.lock().execs.contains_key(&1));
        drop(t);
        assert!(got.lock().unwrap().is_empty());

        // A failed first child: the sink goes unused.
        let (s, got) = sink();
        let t = reg.register(s);
        t.first(400);
        assert!(reg.reaped(400, 1 << 8));
        assert!(!reg.lock().execs.contains_key(&2));
        t.command(401, false);
        assert!(!reg.reaped(401, 0));
        assert!(got.lock().unwrap().is_empty());
        drop(t);

        // Relayed: the registry lets go at once.
        let (s, got) = sink();
        let t = reg.register(s);
        t.first(500);
        t.command(501, true);
        assert!(!reg.reaped(501, 0));
        assert!(got.lock().unwrap().is_empty());
        drop((t, waiting));
        assert!(empty(&reg));
    }
}
