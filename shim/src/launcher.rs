//! `corral-shim create|pause`: forks; the child setsid()s and forks the shim daemon (which
//! outlives the launcher) and the launcher prints the one JSON line the daemon reports
//! over a pipe: `{"pid":N}` or `{"error":"..."}`.

use std::io::{self, BufRead, BufReader, PipeWriter, Write};
use std::path::Path;

use crate::container::spec;
use crate::daemon::{self, Mode};
use crate::error::{Context, Result};
use crate::{pause, sys};

fn error_line(msg: &str) -> String {
    serde_json::json!({ "error": msg }).to_string()
}

/// Runs the launcher; returns the process exit code.
pub fn run(mode: Mode, bundle: &Path, id: &str) -> i32 {
    let (r, w) = match io::pipe() {
        Ok(p) => p,
        Err(e) => {
            println!(
                "{}",
                error_line(&format!("creating the readiness pipe: {e}"))
            );
            return 1;
        }
    };
    let child = match sys::fork() {
        Ok(sys::Fork::Child) => {
            drop(r);
            intermediate(mode, bundle, id, w)
        }
        Ok(sys::Fork::Parent(pid)) => pid,
        Err(e) => {
            println!("{}", error_line(&format!("fork: {e}")));
            return 1;
        }
    };
    drop(w);
    let mut line = String::new();
    let _ = BufReader::new(r).read_line(&mut line);
    let _ = sys::waitpid(child, false);
    let line = line.trim();
    let parsed: Option<serde_json::Value> = serde_json::from_str(line).ok();
    let (out, code) = match parsed {
        Some(v) if v.get("pid").is_some_and(|p| p.is_u64()) => (line.to_string(), 0),
        Some(v) if v.get("error").is_some() => (line.to_string(), 1),
        _ => (error_line("the shim exited before reporting"), 1),
    };
    let mut stdout = io::stdout().lock();
    let _ = writeln!(stdout, "{out}");
    let _ = stdout.flush();
    code
}

/// The middle process: new session, (pause: namespaces, cgroup, new pid ns), fork the daemon.
fn intermediate(mode: Mode, bundle: &Path, id: &str, mut report: PipeWriter) -> ! {
    let r = (|| -> Result<()> {
        sys::setsid().ctx(|| "setsid".into())?;
        // Whatever corrald left open must not reach the container.
        sys::cloexec_from(3);
        let s = spec::load(bundle)?;
        let plan = spec::plan(&s, mode == Mode::Pause)?;
        drop(s);
        if mode == Mode::Pause {
            pause::prepare(&plan)?;
        }
        match sys::fork().ctx(|| "fork".into())? {
            sys::Fork::Child => daemon::run(
                mode,
                bundle,
                id,
                plan,
                report.try_clone().ctx(|| "dup".into())?,
            ),
            sys::Fork::Parent(_) => Ok(()),
        }
    })();
    match r {
        Ok(()) => sys::exit_now(0),
        Err(e) => {
            let _ = report.write_all(format!("{}\n", error_line(&e.to_string())).as_bytes());
            sys::exit_now(1)
        }
    }
}
