//! The D-Bus client and transient units against a real systemd (PID 1): scopes with limits
//! around a forked child, a child that puts itself into its scope (how corral-shim uses it), a
//! transient pod slice, stopping, errors, and the system bus as well as systemd's private socket.
//!
//! Runs only where systemd is PID 1 (`/run/systemd/private` exists), as root; elsewhere it
//! returns with a note, unless CORRAL_TEST_CGROUP_DRIVER=systemd, which makes that a failure.
//! On a host without systemd, in the cgroup v2 guest:
//!
//!     cargo test -p corral-common --no-run
//!     CORRAL_TEST_CGROUP_DRIVER=systemd VM_INIT=systemd VM_ENV=CORRAL_TEST_CGROUP_DRIVER \
//!         ../shared/vm/run-in-vm.sh target/debug/deps/systemd-<hash> --nocapture
//!
//! Everything happens in one test function: it forks, and a forked child of a test binary is
//! safest while no other test thread runs.

use std::fs;
use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use common::dbus::{self, Arg, Connection};
use common::systemd::{self, CgroupsPath, Resources, Value};

const GATE: &str = "CORRAL_TEST_CGROUP_DRIVER";

fn systemd_is_here() -> bool {
    if Path::new(dbus::SYSTEMD_PRIVATE_SOCKET).exists() {
        return true;
    }
    assert_ne!(
        std::env::var(GATE).as_deref(),
        Ok("systemd"),
        "{GATE}=systemd, but systemd is not PID 1 here ({} is missing)",
        dbus::SYSTEMD_PRIVATE_SOCKET
    );
    eprintln!("note: systemd is not PID 1 here: systemd tests skipped (set {GATE}=systemd to make that a failure)");
    false
}

fn suffix() -> String {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    format!("{:x}{:x}", std::process::id(), t.subsec_nanos())
}

fn read(path: &str) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| format!("(unreadable {path}: {e})")).trim().to_string()
}

fn cg_dir(cgroup: &str) -> String {
    format!("/sys/fs/cgroup{cgroup}")
}

/// A child that sleeps until a signal ends it.
fn fork_sleeper() -> u32 {
    // SAFETY: the child only calls pause(), which is async-signal-safe.
    match unsafe { libc::fork() } {
        0 => loop {
            unsafe { libc::pause() };
        },
        -1 => panic!("fork: {}", std::io::Error::last_os_error()),
        pid => pid as u32,
    }
}

/// Waits for a child to end; the signal that killed it, or None if it exited.
fn reap(pid: u32, timeout: Duration) -> Option<i32> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut status = 0;
        // SAFETY: plain waitpid on our own child.
        let r = unsafe { libc::waitpid(pid as i32, &mut status, libc::WNOHANG) };
        if r == pid as i32 {
            return libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status));
        }
        assert!(r == 0, "waitpid {pid}: {}", std::io::Error::last_os_error());
        assert!(Instant::now() < deadline, "child {pid} still running after {timeout:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// How long until `dir` is gone, if it goes within `timeout`.
fn gone_within(dir: &str, timeout: Duration) -> Option<Duration> {
    let t = Instant::now();
    while Path::new(dir).exists() {
        if t.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Some(t.elapsed())
}

/// A unit's ActiveState, or None when systemd has no such unit loaded.
fn unit_state(conn: &mut Connection, unit: &str) -> Option<String> {
    let path =
        match conn.call(Some(systemd::SERVICE), systemd::OBJECT, systemd::MANAGER, "GetUnit", vec![Arg::str(unit)]) {
            Ok(m) => m.body[0].as_str().unwrap().to_string(),
            Err(e) if e.dbus_name() == Some(systemd::ERROR_NO_SUCH_UNIT) => return None,
            Err(e) => panic!("GetUnit {unit}: {e}"),
        };
    let m = conn
        .call(
            Some(systemd::SERVICE),
            &path,
            "org.freedesktop.DBus.Properties",
            "Get",
            vec![Arg::str("org.freedesktop.systemd1.Unit"), Arg::str("ActiveState")],
        )
        .unwrap();
    match &m.body[0] {
        Arg::Variant(v) => Some(v.as_str().unwrap().to_string()),
        other => panic!("ActiveState {other:?}"),
    }
}

#[test]
fn transient_units_under_systemd() {
    if !systemd_is_here() {
        return;
    }
    let r = suffix();
    let slice = format!("corral-dbustest{r}.slice");
    let mut conn = Connection::systemd_private().expect("systemd's private socket (run as root)");
    assert!(!conn.is_bus());

    scope_around_a_child(&mut conn, &slice, &r);
    child_moves_itself(&mut conn, &slice, &r);
    errors_and_empty_scopes(&mut conn, &slice, &r);
    over_the_system_bus(&slice, &r);
    timing(&mut conn, &slice, &r);

    // Our slice was made implicitly by the units in it; stopping it takes it away.
    println!("{slice} after its units stopped: {:?}", unit_state(&mut conn, &slice));
    systemd::stop_unit(&mut conn, &slice).unwrap();
    let dir = cg_dir(&systemd::expand_slice(&slice).unwrap());
    assert!(gone_within(&dir, Duration::from_secs(5)).is_some(), "{dir} still there");
    println!("corral.slice after {slice} stopped: {:?}", unit_state(&mut conn, "corral.slice"));
}

/// A sleeping child put into a scope with limits; the limits in the cgroup files; stop kills it
/// and removes the cgroup.
fn scope_around_a_child(conn: &mut Connection, slice: &str, r: &str) {
    let cg = CgroupsPath::parse(&format!("{slice}:corral:{r}a")).unwrap();
    let unit = cg.unit_name();
    let child = fork_sleeper();
    let res = Resources {
        cpu_shares: Some(1024),
        cpu_quota: Some(12_345),
        cpu_period: Some(100_000),
        memory_limit: Some(64 << 20),
        memory_swap: Some(64 << 20),
        pids_limit: Some(32),
        cpuset_cpus: Some("0".into()),
        cpuset_mems: Some("0".into()),
    };
    let mut props = systemd::unit_properties(&cg, &[child], "corral dbus test a");
    props.extend(systemd::resource_properties(&res).unwrap());
    let t = Instant::now();
    systemd::start_unit_and_wait(conn, &unit, &props).unwrap();
    println!("{unit}: StartTransientUnit + JobRemoved in {:?}", t.elapsed());

    assert_eq!(systemd::cgroup_of(child).unwrap(), cg.cgroup());
    assert_eq!(
        cg.cgroup(),
        format!("/corral.slice/corral-dbustest{r}.slice/corral-{r}a.scope"),
        "implicit parents from the slice's name"
    );
    let dir = cg_dir(&cg.cgroup());
    assert_eq!(read(&format!("{dir}/memory.max")), (64 << 20).to_string());
    assert_eq!(read(&format!("{dir}/pids.max")), "32");
    assert_eq!(read(&format!("{dir}/cpu.weight")), "39");
    // 12345 µs per 100 ms rounds up to 13% of a CPU.
    assert_eq!(read(&format!("{dir}/cpu.max")), format!("{} 100000", systemd::rounded_cpu_quota(12_345, 100_000)));
    assert_eq!(read(&format!("{dir}/cpuset.cpus")), "0");
    assert_eq!(read(&format!("{dir}/cpuset.mems")), "0");
    if Path::new(&format!("{dir}/memory.swap.max")).exists() {
        assert_eq!(read(&format!("{dir}/memory.swap.max")), "0");
    }
    // Delegate=yes: the scope's own files are ours.
    println!("{unit}: cgroup.subtree_control {:?}", read(&format!("{dir}/cgroup.subtree_control")));
    assert_eq!(unit_state(conn, &unit).as_deref(), Some("active"));

    // The same name again while it runs.
    let e = systemd::start_unit_and_wait(conn, &unit, &props).unwrap_err();
    assert_eq!(e.dbus_name(), Some(systemd::ERROR_UNIT_EXISTS), "{e}");
    println!("{unit} started twice: {e}");

    let t = Instant::now();
    systemd::stop_unit(conn, &unit).unwrap();
    println!("{unit}: StopUnit + JobRemoved in {:?}", t.elapsed());
    assert_eq!(reap(child, Duration::from_secs(10)), Some(libc::SIGTERM), "the child was not killed by SIGTERM");
    let gone = gone_within(&dir, Duration::from_secs(5));
    println!("{unit}: cgroup gone {gone:?} after the stop job");
    assert!(gone.is_some(), "{dir} still there");
    assert_eq!(unit_state(conn, &unit), None);
    // Stopping what is gone is fine.
    systemd::stop_unit(conn, &unit).unwrap();
    systemd::reset_failed_unit(conn, &unit).unwrap();
    let parent = cg_dir(&systemd::expand_slice(slice).unwrap());
    println!(
        "{slice} after its only scope stopped: dir exists {}, state {:?}",
        Path::new(&parent).exists(),
        unit_state(conn, slice)
    );
}

/// The shim's way: a forked, single-threaded child connects, starts its own scope with its own
/// pid, waits for the job and checks /proc/self/cgroup; here in a transient pod slice.
fn child_moves_itself(conn: &mut Connection, slice: &str, r: &str) {
    let pod = format!("corral-dbustest{r}-pod1.slice");
    let pod_cg = CgroupsPath::parse(&format!("{slice}::{pod}")).unwrap();
    let mut props = systemd::unit_properties(&pod_cg, &[], "corral dbus test pod");
    props.push(("MemoryMax", Value::U64(128 << 20)));
    systemd::start_unit_and_wait(conn, &pod, &props).unwrap();
    let pod_dir = cg_dir(&pod_cg.cgroup());
    assert_eq!(read(&format!("{pod_dir}/memory.max")), (128 << 20).to_string());
    assert_eq!(unit_state(conn, &pod).as_deref(), Some("active"));

    let cg = CgroupsPath::parse(&format!("{pod}:corral:{r}b")).unwrap();
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the array with two new descriptors.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: the child only uses this thread; it never returns into the test harness.
    let child = match unsafe { libc::fork() } {
        -1 => panic!("fork: {}", std::io::Error::last_os_error()),
        0 => {
            // SAFETY: the write end is ours; the read end is the parent's.
            let mut w = unsafe { fs::File::from_raw_fd(fds[1]) };
            unsafe { libc::close(fds[0]) };
            let t = Instant::now();
            let outcome = (|| -> Result<(), String> {
                let mut conn = Connection::system().map_err(|e| e.to_string())?;
                let me = std::process::id();
                let mut props = systemd::unit_properties(&cg, &[me], "corral dbus test b");
                let res = Resources { memory_limit: Some(32 << 20), pids_limit: Some(16), ..Default::default() };
                props.extend(systemd::resource_properties(&res).map_err(|e| e.to_string())?);
                systemd::start_unit_and_wait(&mut conn, &cg.unit_name(), &props).map_err(|e| e.to_string())?;
                systemd::wait_in_cgroup(0, &cg.cgroup(), Duration::from_secs(1)).map_err(|e| e.to_string())
            })();
            let line = match outcome {
                Ok(()) => format!("ok {}\n", t.elapsed().as_micros()),
                Err(e) => format!("error {e}\n"),
            };
            let _ = w.write_all(line.as_bytes());
            drop(w);
            loop {
                unsafe { libc::pause() };
            }
        }
        pid => pid as u32,
    };
    // SAFETY: the read end is ours; the child has its own copy of the write end.
    let mut rd = unsafe { fs::File::from_raw_fd(fds[0]) };
    unsafe { libc::close(fds[1]) };
    let mut line = String::new();
    rd.read_to_string(&mut line).unwrap();
    let micros = line.strip_prefix("ok ").unwrap_or_else(|| panic!("child: {line}"));
    println!(
        "{}: the child connected, started its own scope and saw itself in it in {} µs",
        cg.unit_name(),
        micros.trim()
    );
    assert_eq!(systemd::cgroup_of(child).unwrap(), cg.cgroup());
    assert_eq!(
        cg.cgroup(),
        format!("/corral.slice/corral-dbustest{r}.slice/corral-dbustest{r}-pod1.slice/corral-{r}b.scope")
    );
    let dir = cg_dir(&cg.cgroup());
    assert_eq!(read(&format!("{dir}/memory.max")), (32 << 20).to_string());
    assert_eq!(read(&format!("{dir}/pids.max")), "16");

    // Stopping the pod slice stops the scope in it, too.
    systemd::stop_unit(conn, &pod).unwrap();
    assert_eq!(reap(child, Duration::from_secs(10)), Some(libc::SIGTERM));
    assert!(gone_within(&dir, Duration::from_secs(5)).is_some(), "{dir} still there");
    assert!(gone_within(&pod_dir, Duration::from_secs(5)).is_some(), "{pod_dir} still there");
    assert_eq!(unit_state(conn, &cg.unit_name()), None);
}

/// What systemd refuses, and what becomes of a scope whose processes are gone.
fn errors_and_empty_scopes(conn: &mut Connection, slice: &str, r: &str) {
    // An unknown property.
    let e = systemd::start_transient_unit(
        conn,
        &format!("corral-{r}c.scope"),
        "replace",
        &[("NoSuchProperty", Value::Bool(true))],
    )
    .unwrap_err();
    println!("unknown property: {e}");
    assert!(e.dbus_name().is_some(), "{e}");

    // A scope with no process.
    let cg = CgroupsPath::parse(&format!("{slice}:corral:{r}d")).unwrap();
    let props = systemd::unit_properties(&cg, &[], "corral dbus test d");
    let empty = systemd::start_unit_and_wait(conn, &cg.unit_name(), &props);
    println!("a scope without PIDs: {empty:?}, state after: {:?}", unit_state(conn, &cg.unit_name()));
    let _ = systemd::stop_unit(conn, &cg.unit_name());

    // A scope whose only process exits.
    let cg = CgroupsPath::parse(&format!("{slice}:corral:{r}e")).unwrap();
    // SAFETY: the child only sleeps and _exits.
    let child = match unsafe { libc::fork() } {
        0 => unsafe {
            libc::usleep(300_000);
            libc::_exit(0)
        },
        -1 => panic!("fork"),
        pid => pid as u32,
    };
    let props = systemd::unit_properties(&cg, &[child], "corral dbus test e");
    systemd::start_unit_and_wait(conn, &cg.unit_name(), &props).unwrap();
    let dir = cg_dir(&cg.cgroup());
    assert!(Path::new(&dir).exists());
    assert_eq!(reap(child, Duration::from_secs(10)), None);
    let gone = gone_within(&dir, Duration::from_secs(5));
    println!(
        "a scope whose process exited: cgroup gone after {gone:?}, unit state {:?}",
        unit_state(conn, &cg.unit_name())
    );
    assert!(gone.is_some(), "an emptied scope's cgroup {dir} is still there");
    systemd::stop_unit(conn, &cg.unit_name()).unwrap();
}

/// The fallback when the private socket is not ours to use: the system bus, with Hello,
/// Subscribe and a match rule.
fn over_the_system_bus(slice: &str, r: &str) {
    let t = Instant::now();
    let mut conn = match Connection::system_bus() {
        Ok(c) => c,
        Err(e) => {
            println!("no system bus here ({e}): bus case skipped");
            return;
        }
    };
    println!("system bus: connected as {:?} in {:?}", conn.unique_name(), t.elapsed());
    let t = Instant::now();
    drop(Connection::system_bus().unwrap());
    println!("system bus: a second connection in {:?}", t.elapsed());
    assert!(conn.is_bus());
    let cg = CgroupsPath::parse(&format!("{slice}:corral:{r}f")).unwrap();
    let child = fork_sleeper();
    let mut props = systemd::unit_properties(&cg, &[child], "corral dbus test f");
    props.push(("TasksMax", Value::U64(7)));
    let t = Instant::now();
    systemd::start_unit_and_wait(&mut conn, &cg.unit_name(), &props).unwrap();
    println!("{} over the bus: started in {:?}", cg.unit_name(), t.elapsed());
    assert_eq!(systemd::cgroup_of(child).unwrap(), cg.cgroup());
    assert_eq!(read(&format!("{}/pids.max", cg_dir(&cg.cgroup()))), "7");
    systemd::stop_unit(&mut conn, &cg.unit_name()).unwrap();
    assert_eq!(reap(child, Duration::from_secs(10)), Some(libc::SIGTERM));
}

/// How long one StartTransientUnit + job wait takes: on an open connection, and with the
/// connection made for it (as the shim does).
fn timing(conn: &mut Connection, slice: &str, r: &str) {
    let mut open = Vec::new();
    let mut fresh = Vec::new();
    for i in 0..5 {
        for (with_connect, times) in [(false, &mut open), (true, &mut fresh)] {
            let cg = CgroupsPath::parse(&format!("{slice}:corral:{r}t{i}{}", with_connect as u8)).unwrap();
            let child = fork_sleeper();
            let mut props = systemd::unit_properties(&cg, &[child], "corral dbus timing");
            props.push(("MemoryMax", Value::U64(64 << 20)));
            let t = Instant::now();
            if with_connect {
                let mut c = Connection::system().unwrap();
                systemd::start_unit_and_wait(&mut c, &cg.unit_name(), &props).unwrap();
            } else {
                systemd::start_unit_and_wait(conn, &cg.unit_name(), &props).unwrap();
            }
            times.push(t.elapsed());
            assert_eq!(systemd::cgroup_of(child).unwrap(), cg.cgroup());
            systemd::stop_unit(conn, &cg.unit_name()).unwrap();
            reap(child, Duration::from_secs(10));
        }
    }
    // The call and the job apart: how long until the reply, how long until JobRemoved, and how
    // often JobRemoved was already there (queued, or read together with the reply).
    let (mut reply, mut job, mut early) = (Vec::new(), Vec::new(), 0);
    for i in 0..5 {
        let cg = CgroupsPath::parse(&format!("{slice}:corral:{r}s{i}")).unwrap();
        let child = fork_sleeper();
        let mut props = systemd::unit_properties(&cg, &[child], "corral dbus timing");
        if i == 1 {
            props.extend(systemd::resource_properties(&Resources::default()).unwrap());
        }
        systemd::subscribe(conn).unwrap();
        let t = Instant::now();
        let path = systemd::start_transient_unit(conn, &cg.unit_name(), "replace", &props).unwrap();
        reply.push(t.elapsed());
        if i < 2 {
            // Without TasksMax systemd caps a scope at DefaultTasksMax; resource_properties of no
            // limits says infinity, as a cgroup made through cgroupfs has.
            systemd::wait_in_cgroup(child, &cg.cgroup(), Duration::from_secs(30)).unwrap();
            let dir = cg_dir(&cg.cgroup());
            let pids_max = read(&format!("{dir}/pids.max"));
            println!(
                "a scope {} resource properties: pids.max {pids_max} memory.max {} cpu.weight {}",
                if i == 0 { "without" } else { "with no-limit" },
                read(&format!("{dir}/memory.max")),
                read(&format!("{dir}/cpu.weight"))
            );
            assert_eq!(pids_max == "max", i == 1);
        }
        if systemd::wait_job(conn, &path, Duration::ZERO).is_ok() {
            early += 1;
        } else {
            systemd::wait_job(conn, &path, Duration::from_secs(30)).unwrap();
        }
        job.push(t.elapsed());
        assert_eq!(systemd::cgroup_of(child).unwrap(), cg.cgroup());
        systemd::stop_unit(conn, &cg.unit_name()).unwrap();
        reap(child, Duration::from_secs(10));
    }
    let stats = |v: &[Duration]| {
        let mut v = v.to_vec();
        v.sort();
        format!("min {:?} median {:?} max {:?}", v[0], v[v.len() / 2], v[v.len() - 1])
    };
    println!("StartTransientUnit + JobRemoved, open connection: {}", stats(&open));
    println!("StartTransientUnit + JobRemoved, with connect + auth: {}", stats(&fresh));
    println!("StartTransientUnit reply: {}; JobRemoved: {}", stats(&reply), stats(&job));
    println!("JobRemoved already there when the reply was read: {early} of {}", job.len());
}
