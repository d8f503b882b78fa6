//! The lifecycle both kinds of shim share: CREATED → RUNNING → STOPPED, the Start in progress,
//! the exit and its waiters, and whether the shim should exit after its current answer.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use proto::v1::{ErrorKind, Exit, Status};

use crate::error::Fail;
use crate::exit;

struct Inner {
    status: Status,
    created_at: i64,
    started_at: i64,
    exit: Option<Exit>,
    /// A Start is between writing the start byte and learning the outcome.
    starting: bool,
    start_error: Option<String>,
    /// Set when the shim should exit once the current answer is written.
    exit_requested: bool,
}

pub struct Lifecycle {
    inner: Mutex<Inner>,
    changed: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Lifecycle {
    /// CREATED now, or RUNNING since now (the pause, which is its own process).
    pub fn new(running: bool) -> Lifecycle {
        let now = exit::now_nanos();
        Lifecycle {
            inner: Mutex::new(Inner {
                status: if running { Status::Running } else { Status::Created },
                created_at: now,
                started_at: if running { now } else { 0 },
                exit: None,
                starting: false,
                start_error: None,
                exit_requested: false,
            }),
            changed: Condvar::new(),
        }
    }

    /// (status, created_at, started_at, exit).
    pub fn snapshot(&self) -> (Status, i64, i64, Option<Exit>) {
        let i = lock(&self.inner);
        (i.status, i.created_at, i.started_at, i.exit.clone())
    }

    pub fn status(&self) -> Status {
        lock(&self.inner).status
    }

    pub fn started_at(&self) -> i64 {
        lock(&self.inner).started_at
    }

    /// A Start begins: only from CREATED.
    pub fn begin_start(&self) -> Result<(), Fail> {
        let mut i = lock(&self.inner);
        match i.status {
            Status::Created => {
                i.starting = true;
                Ok(())
            }
            Status::Running => Err(Fail::new(ErrorKind::FailedPrecondition, "container is already started")),
            Status::Stopped => Err(Fail::new(ErrorKind::FailedPrecondition, "container has already exited")),
        }
    }

    /// The Start's outcome: RUNNING, or the start error the exit will carry.
    pub fn finish_start(&self, error: Option<String>) {
        let mut i = lock(&self.inner);
        i.starting = false;
        if error.is_some() {
            i.start_error = error;
        } else if i.status == Status::Created {
            i.status = Status::Running;
            i.started_at = exit::now_nanos();
        }
        self.changed.notify_all();
    }

    /// Once no Start is in progress: (start error, started_at).
    pub fn settled_start(&self) -> (Option<String>, i64) {
        let mut i = lock(&self.inner);
        while i.starting {
            i = self.changed.wait(i).unwrap_or_else(|p| p.into_inner());
        }
        (i.start_error.clone(), i.started_at)
    }

    /// Waits for the exit; None on timeout.
    pub fn wait_exit(&self, timeout: Option<Duration>) -> Option<Exit> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut i = lock(&self.inner);
        loop {
            if let Some(e) = &i.exit {
                return Some(e.clone());
            }
            match deadline {
                None => i = self.changed.wait(i).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return None;
                    }
                    i = match self.changed.wait_timeout(i, d - now) {
                        Ok((g, _)) => g,
                        Err(p) => p.into_inner().0,
                    };
                }
            }
        }
    }

    /// STOPPED with `exit`; with `quit`, the shim exits after its current answer too.
    pub fn set_exit(&self, exit: Exit, quit: bool) {
        let mut i = lock(&self.inner);
        i.status = Status::Stopped;
        i.exit = Some(exit);
        i.exit_requested |= quit;
        self.changed.notify_all();
    }

    /// Asks the shim to exit after its current answer when `allowed` says so of the status
    /// (checked and set under one lock); returns whether it did.
    pub fn request_exit_if(&self, allowed: impl FnOnce(Status) -> bool) -> bool {
        let mut i = lock(&self.inner);
        if !allowed(i.status) {
            return false;
        }
        i.exit_requested = true;
        true
    }

    pub fn exit_requested(&self) -> bool {
        lock(&self.inner).exit_requested
    }
}
