//! corral-shim: one small process per container, like runc and conmon in one.
//!
//! `corral-shim create --bundle DIR --id ID` creates the container from `DIR/config.json`
//! up to just before exec and serves `DIR/shim.sock`; `corral-shim pause --bundle DIR --id POD`
//! becomes PID 1 of a pod's pid namespace.
//!
//! Modules, bottom up (each uses only modules listed before it):
//! - `sys`: the raw system calls, the `unsafe` code (allowed on its line below; also
//!   `container::devfilter`'s bpf(2) calls, with their attribute structs);
//! - `error`: setup errors and failed requests; `syscall`: the seam between container setup and
//!   the kernel (and its recording double, in tests);
//! - `logger` (the CRI log), `shimlog` (the shim's own log), `oom`, `exit` (reaper and exit
//!   record), `conn` (answers, and descriptors passed on a session's connection);
//! - `container`: config.json to a plan (`spec`), and the container process built from it
//!   (`namespaces`, `rootfs`, `process`, `cgroup` with `devfilter` for v2 device rules and
//!   `systemd` for the systemd driver's scopes);
//! - `state` (the shared lifecycle), `role` (what differs between a container's shim and a
//!   pause), `daemon` (the shim's state and operations);
//! - `workload` and `pause`: the two roles; `exec` (ExecSync and ExecStream), `attach` and
//!   `server`: requests;
//! - `launcher`: the launcher and the daemon's wiring of role, reaper and server.
#![deny(unsafe_code)]

mod attach;
mod conn;
mod container;
mod daemon;
mod error;
mod exec;
mod exit;
mod launcher;
mod logger;
mod oom;
mod pause;
mod reaped;
mod role;
mod server;
mod shimlog;
mod state;
#[allow(unsafe_code)]
mod sys;
mod syscall;
mod workload;

use std::path::PathBuf;

use launcher::Mode;

const USAGE: &str = "usage: corral-shim create|pause --bundle DIR --id ID\n       corral-shim --version";

struct Args {
    mode: Mode,
    bundle: PathBuf,
    id: String,
}

fn parse(args: &[String]) -> Result<Option<Args>, String> {
    let Some(cmd) = args.first() else {
        return Err(USAGE.into());
    };
    let mode = match cmd.as_str() {
        "--version" | "-v" | "version" => return Ok(None),
        "create" => Mode::Container,
        "pause" => Mode::Pause,
        other => return Err(format!("unknown command {other:?}\n{USAGE}")),
    };
    let (mut bundle, mut id) = (None, None);
    let mut it = args[1..].iter();
    while let Some(a) = it.next() {
        let (key, inline) = match a.split_once('=') {
            Some((k, v)) => (k, Some(v.to_string())),
            None => (a.as_str(), None),
        };
        let mut value = || inline.clone().or_else(|| it.next().cloned()).ok_or(format!("{key} needs a value"));
        match key {
            "--bundle" | "-b" => bundle = Some(PathBuf::from(value()?)),
            "--id" => id = Some(value()?),
            other => return Err(format!("unknown flag {other:?}\n{USAGE}")),
        }
    }
    let bundle = bundle.ok_or(format!("--bundle is required\n{USAGE}"))?;
    let bundle = std::fs::canonicalize(&bundle).map_err(|e| format!("bundle {}: {e}", bundle.display()))?;
    let id = id.filter(|i| !i.is_empty()).ok_or(format!("--id is required\n{USAGE}"))?;
    Ok(Some(Args { mode, bundle, id }))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match parse(&args) {
        Ok(None) => println!("corral-shim {}", env!("CARGO_PKG_VERSION")),
        Ok(Some(a)) => std::process::exit(launcher::run(a.mode, &a.bundle, &a.id)),
        Err(msg) => {
            println!("{}", serde_json::json!({ "error": msg }));
            std::process::exit(1);
        }
    }
}
