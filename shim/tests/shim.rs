//! corral-shim end to end, as root, on hand-made busybox bundles.

mod common;

use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use proto::v1::{request, response, ErrorKind, Status};
use serde_json::json;

fn exec_ok(r: proto::v1::Response) -> proto::v1::ExecResult {
    match r.kind {
        Some(response::Kind::Exec(e)) => e,
        _ => panic!("exec failed: {} ({:?})", r.error, r.error_kind),
    }
}

fn status_field(text: &str, key: &str) -> String {
    text.lines().find_map(|l| l.strip_prefix(key)).map(|v| v.trim().to_string()).unwrap_or_default()
}

/// Shuts the shim down and checks it left nothing: no socket, no cgroup, no daemon.
fn shutdown_clean(fx: &Fixture, b: &Bundle) {
    let r = shutdown(b);
    assert!(r.error.is_empty(), "shutdown: {}", r.error);
    let daemon = *fx.daemons.last().unwrap();
    assert!(eventually(5, || !alive(daemon)), "daemon still alive");
    assert!(!b.dir.join("shim.sock").exists());
    for d in fx.cgroup_dirs(&b.cgroup) {
        assert!(!d.exists(), "{} left behind", d.display());
    }
}

#[test]
fn logs_exit_code_and_exit_record() {
    if !is_root("logs_exit_code_and_exit_record") {
        return;
    }
    let mut fx = Fixture::new();
    let b = fx.bundle("logs");
    let script = "echo hello; echo oops >&2; head -c 20000 /dev/zero | tr '\\0' a; echo; printf tail; exit 3";
    let pid = fx.create(&b, &spec(&b, &["sh", "-c", script])).unwrap();
    let st = state(&b);
    assert_eq!(st.status, Status::Created as i32);
    assert_eq!(st.pid as i32, pid);
    assert!(start(&b).error.is_empty());
    let exit = wait(&b, 10_000).expect("exit");
    assert_eq!((exit.exit_code, exit.signal, exit.oom_killed), (3, 0, false));
    assert!(exit.finished_at > 0 && exit.started_at > 0);
    let record: proto::v1::Exit = serde_json::from_slice(&fs::read(b.dir.join("exit")).unwrap()).unwrap();
    assert_eq!(record, exit);
    let st = state(&b);
    assert_eq!(st.status, Status::Stopped as i32);
    assert_eq!(st.exit.unwrap().exit_code, 3);

    let entries = log_entries(&b.log);
    let stdout: Vec<_> = entries.iter().filter(|e| e.0 == "stdout").collect();
    assert_eq!(stdout[0], &("stdout".into(), "F".into(), "hello".into()));
    assert!(entries.contains(&("stderr".into(), "F".into(), "oops".into())));
    assert_eq!(stdout[1].1, "P");
    assert_eq!(stdout[1].2, "a".repeat(16384));
    assert_eq!(stdout[2].1, "F");
    assert_eq!(stdout[2].2, "a".repeat(20000 - 16384));
    // Output without a final newline stays partial, as containerd logs it.
    assert_eq!(stdout[3], &("stdout".into(), "P".into(), "tail".into()));
    shutdown_clean(&fx, &b);
}

#[test]
fn kill_wait_state_and_shutdown() {
    if !is_root("kill_wait_state_and_shutdown") {
        return;
    }
    let mut fx = Fixture::new();
    let b = fx.bundle("kill");
    let pid = fx.create(&b, &spec(&b, &["sleep", "1000"])).unwrap();
    assert!(start(&b).error.is_empty());
    let st = state(&b);
    assert_eq!(st.status, Status::Running as i32);
    assert!(st.started_at >= st.created_at && st.created_at > 0);
    let daemon = *fx.daemons.last().unwrap();
    if let Some(rss) = vm_rss_kib(daemon) {
        eprintln!("corral-shim daemon VmRSS with a sleeping container: {rss} kB");
        if std::env::var_os("SHIMTEST_SMAPS").is_some() {
            eprintln!("{}", fs::read_to_string(format!("/proc/{daemon}/smaps_rollup")).unwrap_or_default());
            let smaps = fs::read_to_string(format!("/proc/{daemon}/smaps")).unwrap_or_default();
            let mut cur = String::new();
            for l in smaps.lines() {
                if l.contains('-') && !l.starts_with(|c: char| c.is_ascii_uppercase()) {
                    cur = l.to_string();
                }
                if let Some(v) = l.strip_prefix("Rss:") {
                    if v.trim() != "0 kB" {
                        eprintln!("{v:>10} {cur}");
                    }
                }
            }
        }
    }
    let err = wait(&b, 200).unwrap_err();
    assert_eq!(err.error_kind, ErrorKind::DeadlineExceeded as i32);
    let r = shutdown(&b);
    assert_eq!(r.error_kind, ErrorKind::FailedPrecondition as i32, "shutdown of a running container");
    // The cgroup holds the container process.
    let procs = fs::read_to_string(fx.cgroup_dirs(&b.cgroup)[0].join("cgroup.procs")).unwrap();
    assert!(procs.lines().any(|l| l.trim() == pid.to_string()), "{procs}");
    assert!(kill(&b, 9, false).error.is_empty());
    let exit = wait(&b, 10_000).expect("exit");
    assert_eq!((exit.exit_code, exit.signal, exit.oom_killed), (137, 9, false));
    assert!(!alive(pid));
    eprintln!("shim.log:\n{}", fs::read_to_string(b.dir.join("shim.log")).unwrap_or_default());
    // Killing an exited container is not an error.
    assert!(kill(&b, 9, true).error.is_empty());
    shutdown_clean(&fx, &b);
}

#[test]
fn sigterm_trap_exit_code() {
    if !is_root("sigterm_trap_exit_code") {
        return;
    }
    let mut fx = Fixture::new();
    let b = fx.bundle("trap");
    let script = "trap 'echo bye; exit 3' TERM; echo ready; while true; do sleep 0.05; done";
    fx.create(&b, &spec(&b, &["sh", "-c", script])).unwrap();
    assert!(start(&b).error.is_empty());
    assert!(eventually(10, || log_entries(&b.log).iter().any(|e| e.2 == "ready")));
    assert!(kill(&b, 15, false).error.is_empty());
    let exit = wait(&b, 10_000).expect("exit");
    assert_eq!((exit.exit_code, exit.signal), (3, 0));
    assert!(log_entries(&b.log).iter().any(|e| e.2 == "bye"));
    shutdown_clean(&fx, &b);
}

#[test]
fn exec_output_timeout_and_background_child() {
    if !is_root("exec_output_timeout_and_background_child") {
        return;
    }
    let mut fx = Fixture::new();
    let b = fx.bundle("exec");
    let mut s = spec(&b, &["sleep", "1000"]);
    s["process"]["env"].as_array_mut().unwrap().push(json!("FOO=spec"));
    let pid = fx.create(&b, &s).unwrap();
    let r = exec(&b, &["true"], 0);
    assert_eq!(r.error_kind, ErrorKind::FailedPrecondition as i32, "exec before start");
    assert!(start(&b).error.is_empty());

    let res = exec_ok(exec(&b, &["sh", "-c", "echo out $FOO $BAR; echo err >&2; pwd; echo $$; exit 7"], 0));
    assert_eq!(String::from_utf8_lossy(&res.stdout).lines().next(), Some("out spec"));
    assert_eq!(res.stderr, b"err\n");
    assert_eq!(res.exit_code, 7);
    let lines: Vec<String> = String::from_utf8_lossy(&res.stdout).lines().map(String::from).collect();
    assert_eq!(lines[1], "/");
    assert_ne!(lines[2], "1", "exec runs inside the pid namespace, not as its init");
    assert!(lines[2].parse::<u32>().unwrap() < 100, "pid {} is a namespace pid", lines[2]);

    // env override and cwd
    let r = call(
        &b,
        request::Kind::Exec(proto::v1::ExecRequest {
            args: vec!["sh".into(), "-c".into(), "echo $FOO; pwd; cat /proc/self/status".into()],
            env: vec!["FOO=req".into()],
            cwd: "/tmp".into(),
            timeout_ms: 5000,
        }),
    );
    let res = exec_ok(r);
    let out = String::from_utf8_lossy(&res.stdout).to_string();
    assert!(out.starts_with("req\n/tmp\n"), "{out}");
    assert_eq!(u64::from_str_radix(&status_field(&out, "CapEff:"), 16).unwrap(), DEFAULT_CAPS_MASK);
    assert_eq!(status_field(&out, "NoNewPrivs:"), "1");

    // missing command
    let r = exec(&b, &["nosuch"], 5000);
    assert!(r.error.contains(r#"exec: "nosuch": executable file not found in $PATH"#), "{}", r.error);

    // timeout: the command is killed and gone afterwards
    let t = Instant::now();
    let r = exec(&b, &["sh", "-c", "sleep 1000; echo never"], 500);
    assert_eq!(r.error_kind, ErrorKind::DeadlineExceeded as i32, "{}", r.error);
    assert!(t.elapsed() < Duration::from_secs(5));
    let cg = fx.cgroup_dirs(&b.cgroup)[0].join("cgroup.procs");
    assert!(
        eventually(5, || fs::read_to_string(&cg).unwrap().lines().collect::<Vec<_>>() == vec![pid.to_string()]),
        "exec'd processes left: {}",
        fs::read_to_string(&cg).unwrap()
    );

    // a background child holding stdout does not hang the answer
    let t = Instant::now();
    let res = exec_ok(exec(&b, &["sh", "-c", "sleep 30 & echo done"], 0));
    assert!(t.elapsed() < Duration::from_secs(3), "took {:?}", t.elapsed());
    assert_eq!(res.stdout, b"done\n");
    assert_eq!(res.exit_code, 0);

    assert!(kill(&b, 9, true).error.is_empty());
    assert_eq!(wait(&b, 10_000).unwrap().exit_code, 137);
    shutdown_clean(&fx, &b);
}

#[test]
fn exec_gets_the_containers_oom_score_adj_and_rlimits() {
    if !is_root("exec_gets_the_containers_oom_score_adj_and_rlimits") {
        return;
    }
    let mut fx = Fixture::new();
    let b = fx.bundle("execlimits");
    let mut s = spec(&b, &["sleep", "1000"]);
    // Raised, which needs no privilege (lowering needs CAP_SYS_RESOURCE in the init user namespace).
    s["process"]["oomScoreAdj"] = json!(500);
    fx.create(&b, &s).unwrap();
    assert!(start(&b).error.is_empty());
    let daemon = *fx.daemons.last().unwrap();
    let shim_adj = fs::read_to_string(format!("/proc/{daemon}/oom_score_adj")).unwrap();
    let script = "cat /proc/self/oom_score_adj; ulimit -n; ulimit -Hn; ls /proc/self/fd";
    let res = exec_ok(exec(&b, &["sh", "-c", script], 5000));
    let out = String::from_utf8_lossy(&res.stdout).to_string();
    let lines: Vec<&str> = out.lines().collect();
    // The spec's oomScoreAdj and RLIMIT_NOFILE (1024/4096), as the container process has.
    assert_eq!(&lines[..3], &["500", "1024", "4096"], "{out}");
    // Only its stdio (and ls's own directory) are open: nothing of the shim leaks in.
    assert_eq!(&lines[3..], &["0", "1", "2", "3"], "{out}");
    assert_eq!(
        fs::read_to_string(format!("/proc/{daemon}/oom_score_adj")).unwrap(),
        shim_adj,
        "the shim's own is kept"
    );
    assert!(kill(&b, 9, false).error.is_empty());
    wait(&b, 10_000).unwrap();
    shutdown_clean(&fx, &b);
}

#[test]
fn missing_executable_is_a_start_error() {
    if !is_root("missing_executable_is_a_start_error") {
        return;
    }
    let mut fx = Fixture::new();
    let b = fx.bundle("nosuch");
    fx.create(&b, &spec(&b, &["nosuch"])).unwrap();
    let r = start(&b);
    assert_eq!(r.error, r#"exec: "nosuch": executable file not found in $PATH"#);
    let st = state(&b);
    assert_eq!(st.status, Status::Stopped as i32);
    let exit = st.exit.unwrap();
    assert_eq!(exit.exit_code, 128);
    assert_eq!(exit.start_error, r.error);
    let record: proto::v1::Exit = serde_json::from_slice(&fs::read(b.dir.join("exit")).unwrap()).unwrap();
    assert_eq!(record.exit_code, 128);
    shutdown_clean(&fx, &b);

    // A path that is not executable.
    let b = fx.bundle("noexec");
    fs::write(b.rootfs.join("notexec"), "x").unwrap();
    fx.create(&b, &spec(&b, &["/notexec"])).unwrap();
    assert_eq!(start(&b).error, r#"exec: "/notexec": permission denied"#);
    shutdown_clean(&fx, &b);
}

#[test]
fn identity_caps_and_isolation() {
    if !is_root("identity_caps_and_isolation") {
        return;
    }
    let mut fx = Fixture::new();
    let b = fx.bundle("ident");
    let script =
        "cat /proc/self/status; echo host=$(hostname); echo pid=$$; echo timer=$(cat /proc/timer_list | wc -c); \
                  touch /rofile 2>/dev/null && echo root=rw || echo root=ro; touch /tmp/x && echo tmp=rw; \
                  echo sysrq=$(echo 1 2>/dev/null > /proc/sysrq-trigger && echo rw || echo ro); ls /sys/fs/cgroup";
    let mut s = spec(&b, &["sh", "-c", script]);
    s["root"]["readonly"] = json!(true);
    s["mounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev"]}));
    fx.create(&b, &s).unwrap();
    assert!(start(&b).error.is_empty());
    assert_eq!(wait(&b, 10_000).unwrap().exit_code, 0);
    let out: Vec<String> = log_entries(&b.log).into_iter().map(|e| e.2).collect();
    let text = out.join("\n");
    assert_eq!(u64::from_str_radix(&status_field(&text, "CapEff:"), 16).unwrap(), DEFAULT_CAPS_MASK, "{text}");
    assert_eq!(u64::from_str_radix(&status_field(&text, "CapBnd:"), 16).unwrap(), DEFAULT_CAPS_MASK);
    assert_eq!(u64::from_str_radix(&status_field(&text, "CapInh:"), 16).unwrap(), 0);
    for line in ["host=shimtest", "pid=1", "timer=0", "root=ro", "tmp=rw", "sysrq=ro"] {
        assert!(out.iter().any(|l| l == line), "{line} missing in {text}");
    }
    if Path::new("/sys/fs/cgroup/memory").is_dir() {
        assert!(out.iter().any(|l| l == "memory"), "cgroup v1 mount: {text}");
    }
    shutdown_clean(&fx, &b);

    // A non-root user with groups.
    let b = fx.bundle("user");
    let mut s = spec(&b, &["sh", "-c", "cat /proc/self/status; id"]);
    s["process"]["user"] = json!({"uid": 1000, "gid": 1000, "additionalGids": [10, 20], "umask": 18});
    // A non-root process keeps capabilities across exec only through the ambient set.
    s["process"]["capabilities"]["inheritable"] = json!(DEFAULT_CAPS);
    s["process"]["capabilities"]["ambient"] = json!(DEFAULT_CAPS);
    fx.create(&b, &s).unwrap();
    assert!(start(&b).error.is_empty());
    assert_eq!(wait(&b, 10_000).unwrap().exit_code, 0);
    let text: String = log_entries(&b.log).into_iter().map(|e| e.2 + "\n").collect();
    assert_eq!(status_field(&text, "Uid:").split_whitespace().collect::<Vec<_>>(), vec!["1000"; 4]);
    assert_eq!(status_field(&text, "Gid:").split_whitespace().collect::<Vec<_>>(), vec!["1000"; 4]);
    assert_eq!(status_field(&text, "Groups:"), "10 20");
    assert_eq!(u64::from_str_radix(&status_field(&text, "CapEff:"), 16).unwrap(), DEFAULT_CAPS_MASK);
    assert_eq!(u64::from_str_radix(&status_field(&text, "CapAmb:"), 16).unwrap(), DEFAULT_CAPS_MASK);
    assert_eq!(status_field(&text, "Umask:"), "0022");
    shutdown_clean(&fx, &b);
}

#[test]
fn pause_is_pid1_of_the_pod() {
    if !is_root("pause_is_pid1_of_the_pod") {
        return;
    }
    let mut fx = Fixture::new();
    let p = fx.bundle("pause");
    let pause_spec = json!({
        "ociVersion": "1.0.2",
        "linux": {"namespaces": [{"type": "pid"}], "cgroupsPath": p.cgroup}
    });
    let pause_pid = fx.pause(&p, &pause_spec).unwrap();
    let st = state(&p);
    assert_eq!((st.status, st.pid as i32), (Status::Running as i32, pause_pid));
    assert_eq!(
        status_field(&fs::read_to_string(format!("/proc/{pause_pid}/status")).unwrap(), "NSpid:"),
        format!("{pause_pid}\t1")
    );
    // Confined: no capability, no_new_privs, an empty root of its own.
    let status = fs::read_to_string(format!("/proc/{pause_pid}/status")).unwrap();
    for field in ["CapEff:", "CapPrm:", "CapBnd:"] {
        assert_eq!(status_field(&status, field), "0000000000000000", "{field}");
    }
    assert_eq!(status_field(&status, "NoNewPrivs:"), "1");
    let root: Vec<_> = fs::read_dir(format!("/proc/{pause_pid}/root")).unwrap().collect();
    assert!(root.is_empty(), "the pause's root holds {root:?}");
    // It has no stdio to attach to, nor a stdin to close.
    let (_, r, _) =
        open_session(&p, request::Kind::Attach(proto::v1::AttachRequest { stdin: true, stdout: true, stderr: true }));
    assert_eq!(r.error_kind, ErrorKind::FailedPrecondition as i32, "{}", r.error);
    assert!(call(&p, request::Kind::CloseStdin(Default::default())).error.is_empty());

    let b = fx.bundle("member");
    let mut s =
        spec(&b, &["sh", "-c", "echo one=$(tr '\\0' ' ' < /proc/1/cmdline); echo me=$$; sleep 1000 & sleep 1000"]);
    s["linux"]["namespaces"][0] = json!({"type": "pid", "path": format!("/proc/{pause_pid}/ns/pid")});
    fx.create(&b, &s).unwrap();
    assert!(start(&b).error.is_empty());
    assert!(eventually(10, || log_entries(&b.log).iter().any(|e| e.2.starts_with("me="))));
    let out: Vec<String> = log_entries(&b.log).into_iter().map(|e| e.2).collect();
    assert!(out[0].starts_with("one=") && out[0].contains("corral-shim pause"), "{out:?}");
    assert_ne!(out[1], "me=1");

    // Killing the pause ends the pod's pid namespace, and with it the container.
    assert!(kill(&p, 15, false).error.is_empty());
    assert!(eventually(5, || !alive(pause_pid)), "pause still alive");
    // The pause is confined to an empty root (so the pod's containers cannot reach the node
    // through /proc/1): it has nowhere to write an exit record, and corrald needs none.
    assert!(!p.dir.join("exit").exists());
    let exit = wait(&b, 10_000).expect("container exit");
    assert_eq!((exit.exit_code, exit.signal), (137, 9));
    shutdown_clean(&fx, &b);
}

#[test]
fn memory_limit_oom_kill() {
    if !is_root("memory_limit_oom_kill") {
        return;
    }
    let mut fx = Fixture::new();
    let b = fx.bundle("oom");
    let mut s = spec(&b, &["sh", "-c", "x=$(head -c 300000000 /dev/zero | tr '\\0' a); echo survived"]);
    s["linux"]["resources"]["memory"] = json!({"limit": 32 << 20, "swap": 32 << 20});
    fx.create(&b, &s).unwrap();
    let limit = fs::read_to_string(
        fx.cgroup_dirs(&b.cgroup)
            .iter()
            .find(|d| d.starts_with("/sys/fs/cgroup/memory"))
            .unwrap()
            .join("memory.limit_in_bytes"),
    )
    .unwrap();
    assert_eq!(limit.trim(), (32u64 << 20).to_string());
    // An exec'd process killed by the OOM killer is not the container's OOM.
    assert!(start(&b).error.is_empty());
    let exit = wait(&b, 60_000).expect("exit");
    assert_eq!((exit.exit_code, exit.signal, exit.oom_killed), (137, 9, true));
    shutdown_clean(&fx, &b);
}

#[test]
fn exec_oom_is_not_the_containers() {
    if !is_root("exec_oom_is_not_the_containers") {
        return;
    }
    let mut fx = Fixture::new();
    let b = fx.bundle("execoom");
    let mut s = spec(&b, &["sleep", "1000"]);
    s["linux"]["resources"]["memory"] = json!({"limit": 32 << 20});
    fx.create(&b, &s).unwrap();
    assert!(start(&b).error.is_empty());
    let res = exec_ok(exec(&b, &["sh", "-c", "x=$(head -c 300000000 /dev/zero | tr '\\0' a)"], 60_000));
    assert_eq!(res.exit_code, 137);
    assert!(kill(&b, 9, false).error.is_empty());
    let exit = wait(&b, 10_000).unwrap();
    assert_eq!((exit.exit_code, exit.oom_killed), (137, false));
    shutdown_clean(&fx, &b);
}

#[test]
fn shim_survives_its_launchers_parent() {
    if !is_root("shim_survives_its_launchers_parent") {
        return;
    }
    let mut fx = Fixture::new();
    let b = fx.bundle("orphan");
    fs::write(b.dir.join("config.json"), serde_json::to_vec(&spec(&b, &["sleep", "1000"])).unwrap()).unwrap();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{} create --bundle {} --id {} & wait", bin(), b.dir.display(), b.id))
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let pid = v["pid"].as_i64().expect("pid") as i32;
    let daemon = ppid(pid).unwrap();
    fx.daemons.push(daemon);
    assert!(alive(daemon));
    assert!(start(&b).error.is_empty());
    assert_eq!(state(&b).status, Status::Running as i32);
    kill(&b, 9, false);
    wait(&b, 10_000).unwrap();
    shutdown_clean(&fx, &b);
}

#[test]
fn reopen_log_after_rename() {
    if !is_root("reopen_log_after_rename") {
        return;
    }
    let mut fx = Fixture::new();
    let b = fx.bundle("rotate");
    let trig = fx.path().join("trigger");
    fs::create_dir(&trig).unwrap();
    let mut s = spec(&b, &["sh", "-c", "echo one; while [ ! -e /trig/go ]; do sleep 0.02; done; echo two"]);
    s["mounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"destination": "/trig", "type": "bind", "source": trig, "options": ["rbind", "rw"]}));
    fx.create(&b, &s).unwrap();
    assert!(start(&b).error.is_empty());
    assert!(eventually(10, || log_entries(&b.log).iter().any(|e| e.2 == "one")));
    let rotated = b.log.with_extension("log.1");
    fs::rename(&b.log, &rotated).unwrap();
    let r = call(&b, request::Kind::ReopenLog(Default::default()));
    assert!(r.error.is_empty(), "{}", r.error);
    fs::write(trig.join("go"), "").unwrap();
    assert_eq!(wait(&b, 10_000).unwrap().exit_code, 0);
    assert_eq!(log_entries(&rotated).into_iter().map(|e| e.2).collect::<Vec<_>>(), vec!["one"]);
    assert_eq!(log_entries(&b.log).into_iter().map(|e| e.2).collect::<Vec<_>>(), vec!["two"]);

    // The log dir is gone: an error, and no new file.
    let logs = b.log.parent().unwrap().to_path_buf();
    let moved = fx.path().join("logs.gone");
    fs::rename(&logs, &moved).unwrap();
    let r = call(&b, request::Kind::ReopenLog(Default::default()));
    assert!(!r.error.is_empty());
    assert!(!logs.exists());
    shutdown_clean(&fx, &b);
}

#[test]
fn tty_mode() {
    if !is_root("tty_mode") {
        return;
    }
    let mut fx = Fixture::new();
    let b = fx.bundle("tty");
    let mut s = spec(&b, &["sh", "-c", "[ -t 0 ] && [ -t 1 ] && echo isatty; echo err >&2"]);
    s["process"]["terminal"] = json!(true);
    fx.create(&b, &s).unwrap();
    assert!(start(&b).error.is_empty());
    assert_eq!(wait(&b, 10_000).unwrap().exit_code, 0);
    let entries = log_entries(&b.log);
    assert!(entries.iter().all(|e| e.0 == "stdout"), "{entries:?}");
    let texts: Vec<&str> = entries.iter().map(|e| e.2.trim_end_matches('\r')).collect();
    assert_eq!(texts, vec!["isatty", "err"]);
    shutdown_clean(&fx, &b);
}

/// Runs a tty container with `script` (as `uid`, with the spec changed by `edit`) to its exit:
/// its log lines and the shim's log.
fn run_tty(
    fx: &mut Fixture,
    name: &str,
    script: &str,
    uid: u32,
    edit: impl Fn(&mut serde_json::Value),
) -> (Vec<String>, String) {
    let b = fx.bundle(name);
    let mut s = spec(&b, &["sh", "-c", script]);
    s["process"]["terminal"] = json!(true);
    s["process"]["user"] = json!({"uid": uid, "gid": uid});
    edit(&mut s);
    fx.create(&b, &s).unwrap();
    assert!(start(&b).error.is_empty());
    assert_eq!(wait(&b, 10_000).unwrap().exit_code, 0);
    let lines = log_entries(&b.log).into_iter().map(|e| e.2.trim_end_matches('\r').to_string()).collect();
    let shim_log = fs::read_to_string(b.dir.join("shim.log")).unwrap_or_default();
    shutdown_clean(fx, &b);
    (lines, shim_log)
}

#[test]
fn tty_is_the_containers_own_terminal() {
    if !is_root("tty_is_the_containers_own_terminal") {
        return;
    }
    let mut fx = Fixture::new();
    // The terminal is a pty of the container's devpts: `tty` names it, it is the controlling
    // terminal, and it is all three of stdin, stdout and stderr.
    let script = "tty; [ -t 0 ] && [ -t 1 ] && [ -t 2 ] && echo isatty; : < /dev/tty && echo ctty; \
                  ls /dev/pts; echo err >&2";
    let (lines, shim_log) = run_tty(&mut fx, "owntty", script, 0, |_| {});
    assert_eq!(lines.first().map(String::as_str), Some("/dev/pts/0"), "{lines:?}");
    for want in ["isatty", "ctty", "err"] {
        assert!(lines.iter().any(|l| l == want), "{want} missing in {lines:?}");
    }
    assert!(lines.iter().any(|l| l.split_whitespace().eq(["0", "ptmx"])), "only its own pty in its devpts: {lines:?}");
    assert!(!shim_log.contains("no pty"), "{shim_log}");

    // A user without capabilities can reopen it: the slave is theirs, as runc makes it.
    let script = "t=$(tty) && echo tty=$t; stat -c owner=%u $t; echo hi > /dev/tty && : < $t && echo reopened";
    let (lines, _) = run_tty(&mut fx, "owntty1000", script, 1000, |_| {});
    for want in ["tty=/dev/pts/0", "owner=1000", "hi", "reopened"] {
        assert!(lines.iter().any(|l| l == want), "{want} missing in {lines:?}");
    }

    // No devpts in the container: the shim's pty, with a warning, and the container runs.
    let no_devpts = |s: &mut serde_json::Value| {
        s["mounts"].as_array_mut().unwrap().retain(|m| m["type"] != "devpts");
    };
    let (lines, shim_log) = run_tty(&mut fx, "shimtty", "tty; [ -t 0 ] && [ -t 1 ] && echo isatty", 0, no_devpts);
    assert_eq!(lines, vec!["not a tty", "isatty"]);
    assert!(shim_log.contains("no pty in the container's /dev/ptmx (ENOENT), using one of the shim's"), "{shim_log}");
}

#[test]
fn create_failures_leave_nothing() {
    if !is_root("create_failures_leave_nothing") {
        return;
    }
    let mut fx = Fixture::new();
    // A failure inside the container child comes back as a message.
    let b = fx.bundle("badmount");
    let mut s = spec(&b, &["true"]);
    s["mounts"].as_array_mut().unwrap().push(json!({"destination": "/x", "type": "nosuchfs", "source": "none"}));
    let err = fx.create(&b, &s).unwrap_err();
    assert_eq!(err, "mounting nosuchfs none at /x: ENODEV");
    // A failure in the shim before forking.
    let b2 = fx.bundle("badbind");
    let mut s = spec(&b2, &["true"]);
    s["mounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"destination": "/y", "type": "bind", "source": "/nonexistent-shimtest", "options": ["rbind"]}));
    let err = fx.create(&b2, &s).unwrap_err();
    assert!(err.contains("/nonexistent-shimtest") && err.contains("ENOENT"), "{err}");
    // seccomp is refused clearly.
    let b3 = fx.bundle("seccomp");
    let mut s = spec(&b3, &["true"]);
    s["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_ALLOW"});
    assert!(fx.create(&b3, &s).unwrap_err().contains("seccomp"));
    for b in [&b, &b2, &b3] {
        assert!(!b.dir.join("shim.sock").exists());
        for d in fx.cgroup_dirs(&b.cgroup) {
            assert!(!d.exists(), "{} left behind", d.display());
        }
    }
    assert!(fx.daemons.is_empty());
    for b in [&b, &b2, &b3] {
        assert!(eventually(5, || processes_mentioning(&b.id).is_empty()), "{:?}", processes_mentioning(&b.id));
    }
}

fn fds_of(r: &proto::v1::Response) -> proto::v1::Fds {
    match &r.kind {
        Some(response::Kind::Fds(f)) => *f,
        _ => panic!("expected Fds: {} ({:?})", r.error, r.error_kind),
    }
}

fn exit_of(r: Option<proto::v1::Response>) -> proto::v1::Exit {
    match r.map(|r| (r.kind, r.error)) {
        Some((Some(response::Kind::Exit(e)), _)) => e,
        other => panic!("expected Exit: {other:?}"),
    }
}

/// The pids in the container's cgroup.
fn cgroup_pids(fx: &Fixture, b: &Bundle) -> Vec<i32> {
    let procs = fs::read_to_string(fx.cgroup_dirs(&b.cgroup)[0].join("cgroup.procs")).unwrap_or_default();
    procs.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

#[test]
fn exec_stream_pipes_exit_codes_and_start_errors() {
    if !is_root("exec_stream_pipes_exit_codes_and_start_errors") {
        return;
    }
    let mut fx = Fixture::new();
    let b = fx.bundle("stream");
    fx.create(&b, &spec(&b, &["sleep", "1000"])).unwrap();
    let (_, r, fds) = open_session(&b, exec_stream(&["true"], false, true, true, true));
    assert_eq!(r.error_kind, ErrorKind::FailedPrecondition as i32, "before start: {}", r.error);
    assert!(fds.is_empty());
    assert!(start(&b).error.is_empty());

    // stdin, stdout, stderr: cat round trip, then the exit code.
    let (mut conn, r, fds) =
        open_session(&b, exec_stream(&["sh", "-c", "cat; echo err >&2; exit 3"], false, true, true, true));
    let f = fds_of(&r);
    assert_eq!((f.count, fds.len()), (3, 3));
    assert!(f.pid > 0 && alive(f.pid as i32));
    let mut fds = fds.into_iter();
    let (stdin, stdout, stderr) = (fds.next().unwrap(), fds.next().unwrap(), fds.next().unwrap());
    let mut stdin = fs::File::from(stdin);
    stdin.write_all(b"hello\nworld\n").unwrap();
    drop(stdin);
    assert_eq!(read_all(stdout), b"hello\nworld\n");
    assert_eq!(read_all(stderr), b"err\n");
    let exit = exit_of(next_response(&mut conn));
    assert_eq!((exit.exit_code, exit.signal, exit.oom_killed), (3, 0, false));
    assert!(exit.finished_at >= exit.started_at && exit.started_at > 0);
    assert!(next_response(&mut conn).is_none(), "the session ends after Exit");

    // Only stdout: stdin reads /dev/null, stderr goes nowhere.
    let (mut conn, r, fds) = open_session(
        &b,
        exec_stream(&["sh", "-c", "echo out; echo err >&2; read x || echo eof; pwd"], false, false, true, false),
    );
    assert_eq!((fds_of(&r).count, fds.len()), (1, 1));
    assert_eq!(read_all(fds.into_iter().next().unwrap()), b"out\neof\n/\n");
    assert_eq!(exit_of(next_response(&mut conn)).exit_code, 0);

    // No stream at all; killed by a signal.
    let (mut conn, r, fds) = open_session(&b, exec_stream(&["sh", "-c", "kill -9 $$"], false, false, false, false));
    assert_eq!((fds_of(&r).count, fds.len()), (0, 0));
    let exit = exit_of(next_response(&mut conn));
    assert_eq!((exit.exit_code, exit.signal), (137, 9));

    // A command that cannot start is an error, worded as ExecSync words it, with no descriptor.
    let (mut conn, r, fds) = open_session(&b, exec_stream(&["nosuch"], false, true, true, true));
    assert_eq!(r.error, r#"exec: "nosuch": executable file not found in $PATH"#);
    assert!(fds.is_empty() && r.kind.is_none());
    assert!(next_response(&mut conn).is_none());
    let (_, r, _) = open_session(&b, exec_stream(&[], false, true, true, true));
    assert_eq!(r.error_kind, ErrorKind::InvalidArgument as i32);

    assert!(eventually(5, || cgroup_pids(&fx, &b).len() == 1), "left: {:?}", cgroup_pids(&fx, &b));
    assert!(kill(&b, 9, false).error.is_empty());
    wait(&b, 10_000).unwrap();
    let (_, r, _) = open_session(&b, exec_stream(&["true"], false, true, true, true));
    assert_eq!(r.error_kind, ErrorKind::FailedPrecondition as i32, "after exit: {}", r.error);
    shutdown_clean(&fx, &b);
}

#[test]
fn exec_stream_tty_is_the_controlling_terminal() {
    if !is_root("exec_stream_tty_is_the_controlling_terminal") {
        return;
    }
    let mut fx = Fixture::new();
    let b = fx.bundle("streamtty");
    fx.create(&b, &spec(&b, &["sleep", "1000"])).unwrap();
    assert!(start(&b).error.is_empty());
    let script = "tty; [ -t 0 ] && [ -t 1 ] && [ -t 2 ] && echo isatty; : < /dev/tty && echo ctty; \
                  echo err >&2; read x; echo got $x; exit 5";
    let (mut conn, r, fds) = open_session(&b, exec_stream(&["sh", "-c", script], true, true, true, false));
    assert_eq!((fds_of(&r).count, fds.len()), (1, 1));
    let master = fs::File::from(fds.into_iter().next().unwrap());
    (&master).write_all(b"hi\n").unwrap();
    let out = String::from_utf8_lossy(&read_all(master.try_clone().unwrap().into())).replace('\r', "");
    let lines: Vec<&str> = out.lines().collect();
    // The terminal is the container's own: a /dev/pts path that ttyname finds inside it (the
    // input, echoed by the terminal, may come first).
    assert!(lines.iter().any(|l| l.starts_with("/dev/pts/")), "{out}");
    for want in ["isatty", "ctty", "err", "got hi"] {
        assert!(lines.contains(&want), "{want} missing in {out:?}");
    }
    assert_eq!(exit_of(next_response(&mut conn)).exit_code, 5);
    let log = fs::read_to_string(b.dir.join("shim.log")).unwrap_or_default();
    assert!(!log.contains("no pty"), "{log}");
    assert!(kill(&b, 9, false).error.is_empty());
    wait(&b, 10_000).unwrap();
    shutdown_clean(&fx, &b);
}

#[test]
fn exec_stream_closing_the_connection_kills_the_command() {
    if !is_root("exec_stream_closing_the_connection_kills_the_command") {
        return;
    }
    let mut fx = Fixture::new();
    let b = fx.bundle("streamkill");
    let pid = fx.create(&b, &spec(&b, &["sleep", "1000"])).unwrap();
    assert!(start(&b).error.is_empty());
    for tty in [false, true] {
        let (conn, r, fds) =
            open_session(&b, exec_stream(&["sh", "-c", "sleep 1000 & sleep 1000"], tty, true, true, false));
        let exec_pid = fds_of(&r).pid as i32;
        // The container, and the command's two sleeps (sh execs the last one); no first child
        // stays beside them.
        assert!(eventually(5, || cgroup_pids(&fx, &b).len() == 3), "{:?}", cgroup_pids(&fx, &b));
        drop(conn);
        assert!(eventually(5, || !alive(exec_pid)), "the command survived its session");
        assert!(eventually(5, || cgroup_pids(&fx, &b) == vec![pid]), "left: {:?}", cgroup_pids(&fx, &b));
        drop(fds);
    }
    assert!(kill(&b, 9, false).error.is_empty());
    wait(&b, 10_000).unwrap();
    shutdown_clean(&fx, &b);
}

#[test]
fn exec_stream_concurrent_sessions() {
    if !is_root("exec_stream_concurrent_sessions") {
        return;
    }
    let mut fx = Fixture::new();
    let b = fx.bundle("streamconc");
    fx.create(&b, &spec(&b, &["sleep", "1000"])).unwrap();
    assert!(start(&b).error.is_empty());
    // A long session stays open through the others: none of its descriptors (nor theirs)
    // keeps another session's stdin open.
    let (mut long, r, long_fds) = open_session(&b, exec_stream(&["cat"], false, true, true, false));
    assert_eq!(fds_of(&r).count, 2);
    std::thread::scope(|s| {
        let b = &b;
        let mut threads = Vec::new();
        for i in 0..6 {
            threads.push(s.spawn(move || {
                let (mut conn, r, fds) = open_session(
                    b,
                    exec_stream(&["sh", "-c", "cat; echo $$ >&2; exit $0", &i.to_string()], false, true, true, true),
                );
                assert_eq!(fds_of(&r).count, 3);
                let mut fds = fds.into_iter();
                let mut stdin = fs::File::from(fds.next().unwrap());
                let (stdout, stderr) = (fds.next().unwrap(), fds.next().unwrap());
                let msg = format!("session {i}\n").repeat(1000);
                let reader = std::thread::spawn(move || read_all(stdout));
                stdin.write_all(msg.as_bytes()).unwrap();
                drop(stdin);
                assert_eq!(String::from_utf8(reader.join().unwrap()).unwrap(), msg);
                assert!(!read_all(stderr).is_empty());
                assert_eq!(exit_of(next_response(&mut conn)).exit_code, i);
            }));
        }
        threads.push(s.spawn(move || {
            for _ in 0..5 {
                let res = exec_ok(exec(b, &["sh", "-c", "echo sync"], 5000));
                assert_eq!(res.stdout, b"sync\n");
            }
        }));
        for t in threads {
            t.join().unwrap();
        }
    });
    let mut long_fds = long_fds.into_iter();
    let mut stdin = fs::File::from(long_fds.next().unwrap());
    stdin.write_all(b"last\n").unwrap();
    drop(stdin);
    assert_eq!(read_all(long_fds.next().unwrap()), b"last\n");
    assert_eq!(exit_of(next_response(&mut long)).exit_code, 0);
    assert!(kill(&b, 9, false).error.is_empty());
    wait(&b, 10_000).unwrap();
    shutdown_clean(&fx, &b);
}

fn attach_req(stdin: bool, stdout: bool, stderr: bool) -> request::Kind {
    request::Kind::Attach(proto::v1::AttachRequest { stdin, stdout, stderr })
}

fn close_stdin(b: &Bundle) -> proto::v1::Response {
    call(b, request::Kind::CloseStdin(Default::default()))
}

/// An attach's output so far, by stream, and whether the shim ended the session.
#[derive(Default)]
struct Attached {
    out: Vec<u8>,
    err: Vec<u8>,
    ended: bool,
}

impl Attached {
    fn has(&self, stream: &[u8], text: &str) -> bool {
        String::from_utf8_lossy(stream).contains(text)
    }
}

/// Reads Output answers into `a` until `until` holds or the session ends (10 s at most).
fn read_output(conn: &mut std::os::unix::net::UnixStream, a: &mut Attached, until: impl Fn(&Attached) -> bool) {
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    while !a.ended && !until(a) {
        match next_response(conn) {
            None => a.ended = true,
            Some(r) => match r.kind {
                Some(response::Kind::Output(o)) if o.stream == 1 => a.out.extend(o.data),
                Some(response::Kind::Output(o)) if o.stream == 2 => a.err.extend(o.data),
                other => panic!("unexpected answer on an attach: {other:?} {}", r.error),
            },
        }
    }
}

#[test]
fn attach_fans_out_output_passes_stdin_and_close_stdin_ends_it() {
    if !is_root("attach_fans_out_output_passes_stdin_and_close_stdin_ends_it") {
        return;
    }
    let mut fx = Fixture::new();
    let b = fx.bundle("attach");
    let script = "while read l; do echo \"got $l\"; echo \"err $l\" >&2; done; echo bye; sleep 1000";
    let mut s = spec(&b, &["sh", "-c", script]);
    s["annotations"]["io.corral.stdin"] = json!("true");
    fx.create(&b, &s).unwrap();
    let (_, r, _) = open_session(&b, attach_req(true, true, true));
    assert_eq!((r.error.as_str(), r.error_kind), ("container is not running", ErrorKind::FailedPrecondition as i32));
    assert!(start(&b).error.is_empty());

    let (mut a_conn, r, a_fds) = open_session(&b, attach_req(true, true, true));
    assert_eq!((fds_of(&r).count, a_fds.len()), (1, 1));
    let (mut b_conn, r, b_fds) = open_session(&b, attach_req(false, true, false));
    assert_eq!((fds_of(&r).count, b_fds.len()), (0, 0));
    // An exec session alive meanwhile holds nothing of the container's stdin.
    let (exec_conn, r, exec_fds) = open_session(&b, exec_stream(&["sleep", "1000"], false, false, true, false));
    assert_eq!(fds_of(&r).count, 1);

    let mut stdin = fs::File::from(a_fds.into_iter().next().unwrap());
    stdin.write_all(b"one\n").unwrap();
    let (mut a, mut bb) = (Attached::default(), Attached::default());
    read_output(&mut a_conn, &mut a, |a| a.has(&a.out, "got one\n") && a.has(&a.err, "err one\n"));
    read_output(&mut b_conn, &mut bb, |b| b.has(&b.out, "got one\n"));
    assert_eq!((a.out.as_slice(), a.err.as_slice()), (&b"got one\n"[..], &b"err one\n"[..]));
    assert_eq!((bb.out.as_slice(), bb.err.as_slice()), (&b"got one\n"[..], &b""[..]));

    // CloseStdin: once the attach's descriptor is closed too, the container reads EOF.
    drop(stdin);
    assert!(close_stdin(&b).error.is_empty());
    read_output(&mut a_conn, &mut a, |a| a.has(&a.out, "bye\n"));
    read_output(&mut b_conn, &mut bb, |b| b.has(&b.out, "bye\n"));
    assert!(a.has(&a.out, "bye\n") && bb.has(&bb.out, "bye\n"));
    assert!(close_stdin(&b).error.is_empty(), "a second CloseStdin does nothing");
    let (mut c_conn, r, c_fds) = open_session(&b, attach_req(true, true, false));
    assert_eq!((fds_of(&r).count, c_fds.len()), (0, 0), "no stdin once it is closed");

    // The container's exit ends every attach.
    drop((exec_conn, exec_fds));
    assert!(kill(&b, 9, false).error.is_empty());
    for (conn, att) in [(&mut a_conn, &mut a), (&mut b_conn, &mut bb), (&mut c_conn, &mut Attached::default())] {
        read_output(conn, att, |_| false);
        assert!(att.ended);
    }
    assert_eq!(wait(&b, 10_000).unwrap().exit_code, 137);
    let (_, r, _) = open_session(&b, attach_req(false, true, true));
    assert_eq!((r.error.as_str(), r.error_kind), ("container is not running", ErrorKind::FailedPrecondition as i32));
    // The CRI log was written all along.
    let log: Vec<(String, String)> = log_entries(&b.log).into_iter().map(|e| (e.0, e.2)).collect();
    for want in [("stdout", "got one"), ("stderr", "err one"), ("stdout", "bye")] {
        assert!(log.contains(&(want.0.to_string(), want.1.to_string())), "{want:?} missing in {log:?}");
    }
    shutdown_clean(&fx, &b);
}

#[test]
fn attach_tty_and_close_stdin_hangs_the_terminal_up() {
    if !is_root("attach_tty_and_close_stdin_hangs_the_terminal_up") {
        return;
    }
    let mut fx = Fixture::new();
    let b = fx.bundle("attachtty");
    let mut s = spec(&b, &["sh", "-c", "cat; echo cat ended; sleep 1000"]);
    s["process"]["terminal"] = json!(true);
    fx.create(&b, &s).unwrap();
    assert!(start(&b).error.is_empty());
    let (mut conn, r, fds) = open_session(&b, attach_req(true, true, false));
    assert_eq!((fds_of(&r).count, fds.len()), (1, 1));
    let master = fs::File::from(fds.into_iter().next().unwrap());
    // The master takes the window size.
    let ws = libc::winsize { ws_row: 40, ws_col: 100, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads one winsize, alive for the call.
    assert_eq!(unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&master), libc::TIOCSWINSZ, &ws) }, 0);
    (&master).write_all(b"ping\n").unwrap();
    let mut a = Attached::default();
    // The terminal's echo and cat's copy.
    read_output(&mut conn, &mut a, |a| String::from_utf8_lossy(&a.out).matches("ping").count() == 2);
    assert_eq!(String::from_utf8_lossy(&a.out).matches("ping").count(), 2, "{:?}", String::from_utf8_lossy(&a.out));
    drop(master);
    // Hung up: cat (in the foreground process group) ends; the shell, the namespace's init,
    // ignores the SIGHUP it has no handler for.
    assert!(close_stdin(&b).error.is_empty());
    read_output(&mut conn, &mut a, |a| a.has(&a.out, "cat ended"));
    assert!(a.has(&a.out, "cat ended"), "{:?}", String::from_utf8_lossy(&a.out));
    let (_, r, fds) = open_session(&b, attach_req(true, true, false));
    assert_eq!((fds_of(&r).count, fds.len()), (0, 0), "no stdin once the terminal was hung up");
    assert!(kill(&b, 9, false).error.is_empty());
    read_output(&mut conn, &mut a, |_| false);
    assert!(a.ended);
    wait(&b, 10_000).unwrap();
    let log: Vec<String> = log_entries(&b.log).into_iter().map(|e| e.2.trim_end_matches('\r').to_string()).collect();
    assert!(log.iter().any(|l| l == "cat ended"), "{log:?}");
    shutdown_clean(&fx, &b);
}

#[test]
fn attach_without_a_log_ends_with_the_container() {
    if !is_root("attach_without_a_log_ends_with_the_container") {
        return;
    }
    let mut fx = Fixture::new();
    let b = fx.bundle("attachnolog");
    let mut s = spec(&b, &["sh", "-c", "read l; echo \"got $l\"; echo gone >&2; exit 4"]);
    s["annotations"] = json!({"io.corral.stdin": "true"});
    fx.create(&b, &s).unwrap();
    assert!(start(&b).error.is_empty());
    let (mut conn, r, fds) = open_session(&b, attach_req(true, true, true));
    assert_eq!(fds_of(&r).count, 1);
    fs::File::from(fds.into_iter().next().unwrap()).write_all(b"x\n").unwrap();
    let mut a = Attached::default();
    read_output(&mut conn, &mut a, |_| false);
    assert!(a.ended, "the session ends with the container's output");
    assert_eq!((a.out.as_slice(), a.err.as_slice()), (&b"got x\n"[..], &b"gone\n"[..]));
    assert_eq!(wait(&b, 10_000).unwrap().exit_code, 4);
    assert!(!b.log.exists());
    shutdown_clean(&fx, &b);
}

#[test]
fn exec_stream_command_is_the_shims_child() {
    if !is_root("exec_stream_command_is_the_shims_child") {
        return;
    }
    let mut fx = Fixture::new();
    let b = fx.bundle("streamparent");
    let pid = fx.create(&b, &spec(&b, &["sleep", "1000"])).unwrap();
    let daemon = ppid(pid).unwrap();
    assert!(start(&b).error.is_empty());
    let mut sessions = Vec::new();
    for _ in 0..10 {
        let (conn, r, fds) = open_session(&b, exec_stream(&["cat"], false, true, true, false));
        sessions.push((conn, fds_of(&r).pid as i32, fds));
    }
    let shims = processes_mentioning(&b.id);
    let rss: u64 = shims.iter().filter_map(|&p| vm_rss_kib(p)).sum();
    eprintln!("10 open exec sessions: {} shim processes, {rss} KiB RSS", shims.len());
    // No intermediate process: the command's parent is the shim daemon, which is alone.
    for (_, exec_pid, _) in &sessions {
        assert_eq!(ppid(*exec_pid), Some(daemon), "parent of exec {exec_pid}");
    }
    assert_eq!(shims, vec![daemon]);
    // Each session still ends with its command's exit status.
    for (i, (mut conn, _, fds)) in sessions.into_iter().enumerate() {
        let mut fds = fds.into_iter();
        let mut stdin = fs::File::from(fds.next().unwrap());
        stdin.write_all(format!("s{i}\n").as_bytes()).unwrap();
        drop(stdin);
        assert_eq!(read_all(fds.next().unwrap()), format!("s{i}\n").into_bytes());
        let exit = exit_of(next_response(&mut conn));
        assert_eq!((exit.exit_code, exit.signal), (0, 0));
    }
    // ExecSync's commands too are reaped and their status routed.
    let res = exec_ok(exec(&b, &["sh", "-c", "echo x; exit 4"], 5000));
    assert_eq!((res.stdout.as_slice(), res.exit_code), (&b"x\n"[..], 4));
    assert!(eventually(5, || cgroup_pids(&fx, &b) == vec![pid]), "left: {:?}", cgroup_pids(&fx, &b));
    assert!(kill(&b, 9, false).error.is_empty());
    wait(&b, 10_000).unwrap();
    shutdown_clean(&fx, &b);
}
