//! Test fixtures: a busybox rootfs, a config.json like corrald writes, the launcher, the
//! socket client, and a guard that removes processes, cgroups and files even on failure.
#![allow(dead_code, clippy::result_large_err)]

use std::fs;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::symlink;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use proto::v1::{request, response, Request, Response};
use serde_json::{json, Value};

/// The shim under test; SHIMTEST_BIN points at another build (e.g. to measure its RSS).
pub fn bin() -> String {
    std::env::var("SHIMTEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_corral-shim").to_string())
}

/// True when running as root; otherwise prints why the test is skipped.
pub fn is_root(test: &str) -> bool {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root = status.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"));
    if !root {
        eprintln!("skipping {test}: needs root");
    }
    root
}

pub use ::common::caps::DEFAULT as DEFAULT_CAPS;

/// CapEff of DEFAULT_CAPS.
pub const DEFAULT_CAPS_MASK: u64 = (1 << 0)
    | (1 << 1)
    | (1 << 4)
    | (1 << 3)
    | (1 << 27)
    | (1 << 13)
    | (1 << 6)
    | (1 << 7)
    | (1 << 31)
    | (1 << 8)
    | (1 << 10)
    | (1 << 18)
    | (1 << 5)
    | (1 << 29);

static SEQ: AtomicU32 = AtomicU32::new(0);

fn unique() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{}-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::SeqCst), nanos % 100_000)
}

/// One test's world: a temp dir, a cgroup parent /corral/shimtest-<unique>, and the shim
/// daemons it started.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub cg_parent: String,
    pub daemons: Vec<i32>,
}

impl Fixture {
    pub fn new() -> Fixture {
        let dir = tempfile::Builder::new().prefix("shimtest-").tempdir().expect("tempdir");
        Fixture { dir, cg_parent: format!("/corral/shimtest-{}", unique()), daemons: vec![] }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A bundle dir `name` with a busybox rootfs.
    pub fn bundle(&self, name: &str) -> Bundle {
        let dir = self.path().join(name);
        let rootfs = dir.join("rootfs");
        make_rootfs(&rootfs);
        let log = self.path().join("logs").join(format!("{name}.log"));
        fs::create_dir_all(log.parent().unwrap()).unwrap();
        Bundle { dir, rootfs, log, id: format!("{name}-{}", unique()), cgroup: format!("{}/{name}", self.cg_parent) }
    }

    /// Runs the launcher; Ok(pid) or Err(message). Records the daemon for cleanup.
    pub fn create(&mut self, b: &Bundle, spec: &Value) -> Result<i32, String> {
        self.launch("create", b, spec)
    }

    pub fn pause(&mut self, b: &Bundle, spec: &Value) -> Result<i32, String> {
        self.launch("pause", b, spec)
    }

    fn launch(&mut self, cmd: &str, b: &Bundle, spec: &Value) -> Result<i32, String> {
        fs::write(b.dir.join("config.json"), serde_json::to_vec_pretty(spec).unwrap()).unwrap();
        let out = Command::new(bin())
            .args([cmd, "--bundle", b.dir.to_str().unwrap(), "--id", &b.id])
            .output()
            .expect("running corral-shim");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert_eq!(stdout.lines().count(), 1, "exactly one line expected: {stdout:?}");
        let v: Value = serde_json::from_str(stdout.trim()).expect("json line");
        if let Some(pid) = v.get("pid").and_then(Value::as_i64) {
            assert!(out.status.success());
            let pid = pid as i32;
            // The daemon: the pause itself, or the container process's parent.
            let daemon = if cmd == "pause" { pid } else { ppid(pid).expect("container ppid") };
            self.daemons.push(daemon);
            Ok(pid)
        } else {
            assert_eq!(out.status.code(), Some(1), "{stdout}");
            Err(v["error"].as_str().unwrap_or_default().to_string())
        }
    }

    /// The cgroup dirs of this fixture in every v1 hierarchy (or v2).
    pub fn cgroup_dirs(&self, rel: &str) -> Vec<PathBuf> {
        let rel = rel.trim_start_matches('/');
        let mut out = vec![];
        for e in fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
            let p = e.path();
            if p.join("cgroup.procs").exists() && !p.ends_with("unified") && !p.ends_with("systemd") {
                out.push(p.join(rel));
            }
        }
        if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            out = vec![Path::new("/sys/fs/cgroup").join(rel)];
        }
        out
    }
}

pub fn ppid(pid: i32) -> Option<i32> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find_map(|l| l.strip_prefix("PPid:")).and_then(|v| v.trim().parse().ok())
}

pub fn alive(pid: i32) -> bool {
    // A zombie counts as gone.
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit(')').next().map(|r| !r.trim_start().starts_with('Z')).unwrap_or(false))
        .unwrap_or(false)
}

fn kill_pid(pid: i32, sig: i32) {
    // Only pids this fixture started (daemons) or found in its own cgroups.
    let _ = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status();
}

fn subdirs_deepest_first(dir: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                subdirs_deepest_first(&e.path(), out);
            }
        }
    }
    out.push(dir.to_path_buf());
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for &d in &self.daemons {
            if alive(d) {
                kill_pid(d, 9);
            }
        }
        let mut dirs = vec![];
        for top in self.cgroup_dirs(&self.cg_parent) {
            subdirs_deepest_first(&top, &mut dirs);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for d in &dirs {
            loop {
                let procs = fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
                let pids: Vec<i32> = procs.lines().filter_map(|l| l.trim().parse().ok()).collect();
                if pids.is_empty() || Instant::now() > deadline {
                    break;
                }
                for p in pids {
                    kill_pid(p, 9);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        for d in &dirs {
            for _ in 0..100 {
                if fs::remove_dir(d).is_ok() || !d.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

pub struct Bundle {
    pub dir: PathBuf,
    pub rootfs: PathBuf,
    pub log: PathBuf,
    pub id: String,
    pub cgroup: String,
}

fn make_rootfs(rootfs: &Path) {
    for d in ["bin", "proc", "sys", "dev", "tmp", "etc", "root", "usr/bin"] {
        fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("busybox-static at /bin/busybox");
    let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            let _ = symlink("busybox", rootfs.join("bin").join(applet));
        }
    }
    fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/tmp:/bin/sh\n").unwrap();
    fs::write(rootfs.join("etc/group"), "root:x:0:\nuser:x:1000:\n").unwrap();
    let mut perms = fs::metadata(rootfs.join("tmp")).unwrap().permissions();
    use std::os::unix::fs::PermissionsExt;
    perms.set_mode(0o1777);
    fs::set_permissions(rootfs.join("tmp"), perms).unwrap();
}

/// The config.json corrald would write for `args`.
pub fn spec(b: &Bundle, args: &[&str]) -> Value {
    let dev = |path: &str, major: i64, minor: i64| json!({"path": path, "type": "c", "major": major, "minor": minor, "fileMode": 0o666, "uid": 0, "gid": 0});
    let allow = |major: i64, minor: Option<i64>| json!({"allow": true, "type": "c", "major": major, "minor": minor.unwrap_or(-1), "access": "rwm"});
    json!({
        "ociVersion": "1.0.2",
        "root": {"path": b.rootfs, "readonly": false},
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root"],
            "cwd": "/",
            "capabilities": {"bounding": DEFAULT_CAPS, "effective": DEFAULT_CAPS, "permitted": DEFAULT_CAPS},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 4096, "soft": 1024}],
            "noNewPrivileges": true,
            "oomScoreAdj": -500
        },
        "hostname": "shimtest",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/etc/hostname", "type": "bind", "source": "/etc/hostname", "options": ["rbind", "rprivate", "ro"]}
        ],
        "annotations": {"io.corral.log-path": b.log},
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "network"}],
            "cgroupsPath": b.cgroup,
            "resources": {
                "devices": [
                    {"allow": false, "access": "rwm"},
                    allow(1, Some(3)), allow(1, Some(5)), allow(1, Some(7)), allow(1, Some(8)), allow(1, Some(9)),
                    allow(5, Some(0)), allow(5, Some(1)), allow(5, Some(2)), allow(136, None)
                ],
                "pids": {"limit": 200}
            },
            "devices": [dev("/dev/null", 1, 3), dev("/dev/zero", 1, 5), dev("/dev/full", 1, 7),
                        dev("/dev/random", 1, 8), dev("/dev/urandom", 1, 9), dev("/dev/tty", 5, 0)],
            "maskedPaths": ["/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
                            "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware"],
            "readonlyPaths": ["/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
        }
    })
}

/// One request on the bundle's socket.
pub fn call(b: &Bundle, kind: request::Kind) -> Response {
    let mut s = UnixStream::connect(b.dir.join("shim.sock")).expect("connecting to shim.sock");
    proto::write_frame(&mut s, &Request { kind: Some(kind) }).unwrap();
    proto::read_frame(&mut s).expect("response")
}

pub fn start(b: &Bundle) -> Response {
    call(b, request::Kind::Start(Default::default()))
}

pub fn state(b: &Bundle) -> proto::v1::State {
    match call(b, request::Kind::State(Default::default())).kind {
        Some(response::Kind::State(s)) => s,
        other => panic!("state: {other:?}"),
    }
}

pub fn kill(b: &Bundle, signal: i32, all: bool) -> Response {
    call(b, request::Kind::Kill(proto::v1::KillRequest { signal, all }))
}

pub fn wait(b: &Bundle, timeout_ms: u64) -> Result<proto::v1::Exit, Response> {
    let r = call(b, request::Kind::Wait(proto::v1::WaitRequest { timeout_ms }));
    match r.kind {
        Some(response::Kind::Exit(e)) => Ok(e),
        _ => Err(r),
    }
}

pub fn exec(b: &Bundle, args: &[&str], timeout_ms: u64) -> Response {
    call(
        b,
        request::Kind::Exec(proto::v1::ExecRequest {
            args: args.iter().map(|s| s.to_string()).collect(),
            env: vec![],
            cwd: String::new(),
            timeout_ms,
        }),
    )
}

pub fn shutdown(b: &Bundle) -> Response {
    call(b, request::Kind::Shutdown(Default::default()))
}

/// Opens a session (ExecStream, Attach): sends `kind`, reads the first answer and the
/// descriptors that came with its first byte.
pub fn open_session(b: &Bundle, kind: request::Kind) -> (UnixStream, Response, Vec<OwnedFd>) {
    let mut s = UnixStream::connect(b.dir.join("shim.sock")).expect("connecting to shim.sock");
    proto::write_frame(&mut s, &Request { kind: Some(kind) }).unwrap();
    let mut header = [0u8; 4];
    let (n, fds) = ::common::fdpass::recv_with_fds(s.as_raw_fd(), &mut header).expect("recvmsg");
    assert!(n > 0, "the shim closed the session without an answer");
    s.read_exact(&mut header[n..]).unwrap();
    let mut body = vec![0u8; proto::frame_len(header).unwrap()];
    s.read_exact(&mut body).unwrap();
    (s, proto::decode(&body).unwrap(), fds)
}

/// The next answer on a session; None once the shim closed it.
pub fn next_response(s: &mut UnixStream) -> Option<Response> {
    match proto::read_frame(s) {
        Ok(r) => Some(r),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => None,
        Err(e) => panic!("reading a session answer: {e}"),
    }
}

pub fn exec_stream(args: &[&str], tty: bool, stdin: bool, stdout: bool, stderr: bool) -> request::Kind {
    request::Kind::ExecStream(proto::v1::ExecStreamRequest {
        args: args.iter().map(|s| s.to_string()).collect(),
        env: vec![],
        cwd: String::new(),
        tty,
        stdin,
        stdout,
        stderr,
    })
}

/// Everything `fd` yields until EOF (or EIO: a pty whose slave is gone).
pub fn read_all(fd: OwnedFd) -> Vec<u8> {
    let mut f = fs::File::from(fd);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match f.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return out,
        }
    }
}

/// Log entries: (stream, tag, text), checking the timestamp format.
pub fn log_entries(path: &Path) -> Vec<(String, String, String)> {
    let text = fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| {
            let mut it = l.splitn(4, ' ');
            let ts = it.next().unwrap();
            assert!(
                ts.len() == 30 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T' && ts.as_bytes()[19] == b'.',
                "timestamp {ts:?}"
            );
            let stream = it.next().unwrap().to_string();
            let tag = it.next().unwrap().to_string();
            (stream, tag, it.next().unwrap_or("").to_string())
        })
        .collect()
}

/// Waits until `f` holds, up to `secs`.
pub fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

pub fn vm_rss_kib(pid: i32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Live processes whose command line mentions `needle` (a bundle id).
pub fn processes_mentioning(needle: &str) -> Vec<i32> {
    let mut out = vec![];
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmd = fs::read(e.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmd).contains(needle) && alive(pid) {
            out.push(pid);
        }
    }
    out
}
