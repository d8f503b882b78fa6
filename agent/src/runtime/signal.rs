//! Signal names as images (STOPSIGNAL) and the CRI (`Signal`) give them, and their numbers.

/// Names without the `SIG` prefix and their numbers on this architecture.
const NAMED: [(&str, i32); 34] = [
    ("ABRT", libc::SIGABRT),
    ("ALRM", libc::SIGALRM),
    ("BUS", libc::SIGBUS),
    ("CHLD", libc::SIGCHLD),
    ("CLD", libc::SIGCHLD),
    ("CONT", libc::SIGCONT),
    ("FPE", libc::SIGFPE),
    ("HUP", libc::SIGHUP),
    ("ILL", libc::SIGILL),
    ("INT", libc::SIGINT),
    ("IO", libc::SIGIO),
    ("IOT", libc::SIGIOT),
    ("KILL", libc::SIGKILL),
    ("PIPE", libc::SIGPIPE),
    ("POLL", libc::SIGPOLL),
    ("PROF", libc::SIGPROF),
    ("PWR", libc::SIGPWR),
    ("QUIT", libc::SIGQUIT),
    ("SEGV", libc::SIGSEGV),
    ("STKFLT", libc::SIGSTKFLT),
    ("STOP", libc::SIGSTOP),
    ("SYS", libc::SIGSYS),
    ("TERM", libc::SIGTERM),
    ("TRAP", libc::SIGTRAP),
    ("TSTP", libc::SIGTSTP),
    ("TTIN", libc::SIGTTIN),
    ("TTOU", libc::SIGTTOU),
    ("URG", libc::SIGURG),
    ("USR1", libc::SIGUSR1),
    ("USR2", libc::SIGUSR2),
    ("VTALRM", libc::SIGVTALRM),
    ("WINCH", libc::SIGWINCH),
    ("XCPU", libc::SIGXCPU),
    ("XFSZ", libc::SIGXFSZ),
];

/// SIGRTMIN and SIGRTMAX as the C library shows them to programs (glibc keeps 32 and 33).
const RTMIN: i32 = 34;
const RTMAX: i32 = 64;

/// "SIGTERM", "TERM", "term", "15", "SIGRTMIN+3", "RTMAX-1" → the signal number.
pub fn parse(s: &str) -> Option<i32> {
    if let Ok(n) = s.parse::<i32>() {
        return (1..=RTMAX).contains(&n).then_some(n);
    }
    let upper = s.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    if let Some(n) = NAMED.iter().find(|(n, _)| *n == name).map(|(_, v)| *v) {
        return Some(n);
    }
    let offset = |rest: &str| -> Option<i32> { rest.parse::<i32>().ok().filter(|n| (0..=RTMAX - RTMIN).contains(n)) };
    let n = match name {
        "RTMIN" => RTMIN,
        "RTMAX" => RTMAX,
        _ => {
            if let Some(rest) = name.strip_prefix("RTMIN+") {
                RTMIN + offset(rest)?
            } else if let Some(rest) = name.strip_prefix("RTMAX-") {
                RTMAX - offset(rest)?
            } else {
                return None;
            }
        }
    };
    Some(n)
}

/// The canonical `SIG…` name of a signal name or number ("term" → "SIGTERM", "9" → "SIGKILL");
/// None when it is no signal.
pub fn canonical(s: &str) -> Option<String> {
    let n = parse(s)?;
    if s.parse::<i32>().is_err() {
        let upper = s.to_ascii_uppercase();
        return Some(if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") });
    }
    if let Some((name, _)) = NAMED.iter().find(|(_, v)| *v == n) {
        return Some(format!("SIG{name}"));
    }
    Some(match n {
        RTMIN => "SIGRTMIN".into(),
        RTMAX => "SIGRTMAX".into(),
        n if n - RTMIN <= 15 => format!("SIGRTMIN+{}", n - RTMIN),
        n => format!("SIGRTMAX-{}", RTMAX - n),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers() {
        assert_eq!(parse("SIGQUIT"), Some(libc::SIGQUIT));
        assert_eq!(parse("int"), Some(libc::SIGINT));
        assert_eq!(parse("9"), Some(9));
        assert_eq!(parse("SIGRTMIN+1"), Some(35));
        assert_eq!(parse("RTMAX-1"), Some(63));
        assert_eq!(parse("SIGRTMAX"), Some(64));
        for bad in ["", "SIGNOPE", "99", "0", "-1", "SIGRTMIN+31", "RTMAX-x"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn canonical_names() {
        assert_eq!(canonical("term").as_deref(), Some("SIGTERM"));
        assert_eq!(canonical("SIGUSR1").as_deref(), Some("SIGUSR1"));
        assert_eq!(canonical("9").as_deref(), Some("SIGKILL"));
        assert_eq!(canonical("36").as_deref(), Some("SIGRTMIN+2"));
        assert_eq!(canonical("60").as_deref(), Some("SIGRTMAX-4"));
        assert_eq!(canonical("nope"), None);
    }
}
