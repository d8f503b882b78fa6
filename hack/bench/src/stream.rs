//! The streaming scenario: what kubelet and crictl do with the URLs of the Exec and PortForward
//! RPCs, with the clients of the integration tests (`tests::streaming`, written from client-go's
//! side of the protocols):
//!
//! - exec round trip as `crictl exec <c> true`: Exec RPC (stdout, stderr, no stdin, no tty),
//!   HTTP upgrade to SPDY/3.1 offering remotecommand v4..v1, the error, stdout and stderr
//!   streams, then the exit status and the streams' ends;
//! - port-forward throughput: one connection through a `portforward.k8s.io` SPDY session to
//!   busybox httpd in the pod's network namespace, reading a file of `pf_mib` MiB, against a
//!   plain loopback TCP copy of the same size inside this process (the ceiling);
//! - memory per open exec session: `sessions` exec sessions of `sleep 3600` kept open, the
//!   daemon's RSS and the shims' RSS and PSS before and while they are open; then the clients
//!   close their connections and the container is checked for `sleep 3600` processes left.
//!
//! Each part runs in a pod of its own, removed at the end of the part (also when it fails).

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cri_api::v1 as cri;
use tests::streaming::{self as st, PortForward, RemoteCommand, Status, Streams};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cri::{rpc, Cri, Opts, Pod};
use crate::procmem::{self, mib};
use crate::stats::{percentile, Row, Samples};

/// What crictl (client-go before v5) offers for exec over SPDY, in its order.
const CRICTL_SPDY: &[&str] = &[st::V4, st::V3, st::V2, st::V1];
/// Where httpd listens in the port-forward pod.
const WEB_PORT: u16 = 8080;
/// The command of the sessions kept open in the memory part.
const SLEEPER: &[&str] = &["sleep", "3600"];
/// Copy buffer of the port-forward reader and of the loopback ceiling.
const BUF: usize = 64 * 1024;
/// A bound on any single wait of this scenario.
const WAIT: Duration = Duration::from_secs(120);

pub struct StreamOpts {
    /// Exec round trips (after 3 untimed).
    pub n: usize,
    /// Exec sessions kept open at once in the memory part.
    pub sessions: usize,
    /// Size of the port-forwarded file, MiB.
    pub pf_mib: u64,
    /// Port-forward (and ceiling) repetitions.
    pub pf_reps: usize,
}

/// Where memory is read: the daemon's pid and a way to find the runtime's shims.
pub struct Procs<'a> {
    pub daemon: Option<u32>,
    pub shims: &'a dyn Fn() -> Vec<u32>,
}

/// The daemon's and the shims' memory at one moment.
struct Mem {
    daemon: Option<procmem::Mem>,
    shims: procmem::Mem,
    shim_count: usize,
}

impl Procs<'_> {
    fn mem(&self) -> Mem {
        let daemon = self.daemon.and_then(procmem::mem);
        let (shims, shim_count) = procmem::total(&(self.shims)());
        Mem { daemon, shims, shim_count }
    }
}

pub async fn run(c: &Cri, o: &Opts, so: &StreamOpts, procs: &Procs<'_>) -> Result<(Vec<Row>, Vec<String>)> {
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    c.clone().pull(&o.image).await?;

    let (s, n) = in_pod(c, o, "stream-exec", &["sleep", "86400"], |c, p| exec_round_trips(c, p, so.n)).await?;
    rows.extend(s.rows("exec `true` over SPDY, as crictl exec (serial)"));
    notes.extend(n);

    let script = format!(
        "mkdir -p /www && echo ok > /www/index.html \
         && dd if=/dev/zero of=/www/big.tmp bs=1048576 count={} 2>/dev/null && mv /www/big.tmp /www/big \
         && exec httpd -f -p {WEB_PORT} -h /www",
        so.pf_mib
    );
    let (pf_rows, pf_notes) = in_pod(c, o, "stream-pf", &["sh", "-c", &script], |c, p| {
        port_forward(c, p, so.pf_mib, so.pf_reps, procs.daemon)
    })
    .await?;
    rows.extend(pf_rows);
    notes.extend(pf_notes);

    let (mem_rows, mem_notes) =
        in_pod(c, o, "stream-mem", &["sleep", "86400"], |c, p| open_sessions(c, p, so.sessions, procs)).await?;
    rows.extend(mem_rows);
    notes.extend(mem_notes);
    Ok((rows, notes))
}

/// The pod of a part (its id for PortForward) and its running container.
pub struct InPod {
    pub pod: Pod,
    pub container: String,
}

/// Runs `part` with a fresh pod holding one running container of `command`, then stops and
/// removes the pod whatever happened.
async fn in_pod<T, F, Fut>(c: &Cri, o: &Opts, what: &str, command: &[&str], part: F) -> Result<T>
where
    F: FnOnce(Cri, InPod) -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut c = c.clone();
    let pod = c.run_pod(o.pod_config(&format!("bench-{}-{what}", o.tag))?).await?;
    let pod_id = pod.id.clone();
    let res = async {
        let id = c.create(&pod, o.container_config(what, command)).await?;
        c.start(&id).await?;
        part(c.clone(), InPod { pod, container: id }).await
    }
    .await;
    let stop = c.stop_pod(&pod_id).await;
    let remove = c.remove_pod(&pod_id).await;
    let out = res.with_context(|| format!("stream scenario, {what}"))?;
    stop?;
    remove?;
    Ok(out)
}

// ---- exec round trip ------------------------------------------------------------------------

async fn exec_url(c: &mut Cri, container: &str, cmd: &[&str], s: Streams) -> Result<String> {
    st::exec_url(&mut c.rt, st::exec_request(container, cmd, s))
        .await
        .map_err(|e| anyhow::anyhow!("Exec {cmd:?}: {} {}", e.code(), e.message()))
}

/// One `crictl exec c true`, timed in its three phases; whether every stream ended with FIN.
async fn exec_true(c: &mut Cri, container: &str, s: &mut Samples) -> Result<bool> {
    let t = Instant::now();
    let url = exec_url(c, container, &["true"], Streams::OUT).await?;
    let rpc_done = t.elapsed();
    let rc = RemoteCommand::spdy("POST", &url, CRICTL_SPDY, Streams::OUT).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let connected = t.elapsed();
    let out = rc.finish(WAIT).await.map_err(|e| anyhow::anyhow!("exec true: {e}"))?;
    let total = t.elapsed();
    if out.protocol != st::V4 {
        bail!("exec true: negotiated {:?}, expected {}", out.protocol, st::V4);
    }
    // client-go reads each stream to EOF or a reset (spdystream's Read gives EOF for both), so
    // a status followed by RST_STREAM (Go's streaming server closing the connection) is success.
    if out.status() != Status::Success || out.ends.iter().any(|e| e.is_none()) {
        bail!("exec true: status {:?}, ends {:?}, stderr {:?}", out.status(), out.ends, out.stderr_text());
    }
    s.add("Exec RPC", rpc_done);
    s.add("upgrade + error, stdout, stderr streams", connected - rpc_done);
    s.add("command to status and stream ends", total - connected);
    s.add("exec round trip (total)", total);
    Ok(out.ends.iter().all(|e| *e == Some(st::End::Fin)))
}

async fn exec_round_trips(mut c: Cri, p: InPod, n: usize) -> Result<(Samples, Vec<String>)> {
    let mut warm = Samples::default();
    for _ in 0..3 {
        exec_true(&mut c, &p.container, &mut warm).await?;
    }
    let mut s = Samples::default();
    let mut reset = 0;
    for _ in 0..n {
        if !exec_true(&mut c, &p.container, &mut s).await? {
            reset += 1;
        }
    }
    let mut notes = Vec::new();
    if reset > 0 {
        notes.push(format!("exec true: in {reset} of {n} sessions a stream ended with RST_STREAM, not FIN"));
    }
    Ok((s, notes))
}

// ---- port-forward ---------------------------------------------------------------------------

async fn exec_sync(c: &mut Cri, container: &str, cmd: &[&str]) -> Result<(i32, String)> {
    let req = cri::ExecSyncRequest {
        container_id: container.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        timeout: 30,
    };
    let r = rpc("ExecSync", c.rt.exec_sync(req)).await?;
    Ok((r.exit_code, String::from_utf8_lossy(&r.stdout).into_owned()))
}

/// MiB/s of `bytes` in `d`.
fn rate(bytes: u64, d: Duration) -> f64 {
    mib(bytes / 1024) / d.as_secs_f64()
}

/// One forwarded connection: GET /big, read to the end; the body's size and the time from
/// the request's first byte to the response's last.
async fn forward_once(c: &mut Cri, pod: &str, want: u64, s: &mut Samples, daemon: Option<u32>) -> Result<Duration> {
    let t = Instant::now();
    let url = st::port_forward_url(&mut c.rt, pod, &[])
        .await
        .map_err(|e| anyhow::anyhow!("PortForward: {} {}", e.code(), e.message()))?;
    let mut pf = PortForward::spdy(&url).await.map_err(|e| anyhow::anyhow!("port-forward upgrade: {e}"))?;
    let mut f = pf.open(WEB_PORT).await.context("opening the error and data streams")?;
    s.add("PortForward RPC + upgrade + error/data streams", t.elapsed());

    let deadline = tokio::time::Instant::now() + WAIT;
    let mut buf = vec![0u8; BUF];
    let mut head = Vec::new();
    let mut total = 0u64;
    let cpu = |pid: Option<u32>| pid.and_then(procmem::cpu_ns);
    let (daemon0, me0) = (cpu(daemon), cpu(Some(std::process::id())));
    let t = Instant::now();
    f.data_send.write_all(&st::http_get("/big")).await.context("writing the request")?;
    loop {
        let n = match tokio::time::timeout_at(deadline, f.data_recv.read(&mut buf)).await {
            Err(_) => bail!("port-forward: {total} bytes read in {WAIT:?}, no end"),
            Ok(Err(e)) => bail!("port-forward: reading after {total} bytes: {e}"),
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => n,
        };
        if head.len() < 4096 {
            head.extend_from_slice(&buf[..n.min(4096)]);
        }
        total += n as u64;
    }
    let elapsed = t.elapsed();
    if let (Some(a), Some(b)) = (daemon0, cpu(daemon)) {
        s.add("daemon CPU time per transfer", Duration::from_nanos(b.saturating_sub(a)));
    }
    if let (Some(a), Some(b)) = (me0, cpu(Some(std::process::id()))) {
        s.add("client (bench) CPU time per transfer", Duration::from_nanos(b.saturating_sub(a)));
    }
    // client-go resets the data stream once the local connection is done, then reads the
    // error stream to its end.
    f.data_send.reset(5);
    let mut error = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), f.error.read_to_end(&mut error)).await;
    pf.close().await;
    let (status, _) = st::split_http(&head);
    let head_len = head.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4).unwrap_or(0) as u64;
    if !status.contains(" 200 ") || total - head_len != want || !error.is_empty() {
        bail!(
            "port-forward: response {status:?}, body {} bytes (want {want}), error stream {:?}",
            total.saturating_sub(head_len),
            String::from_utf8_lossy(&error)
        );
    }
    Ok(elapsed)
}

/// A plain TCP copy of `bytes` over loopback inside this process, 64 KiB writes and reads: the
/// time from connecting to the last byte.
async fn loopback(bytes: u64) -> Result<Duration> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    let server = tokio::spawn(async move {
        let (mut s, _) = l.accept().await?;
        let buf = vec![0u8; BUF];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(BUF as u64) as usize;
            s.write_all(&buf[..n]).await?;
            left -= n as u64;
        }
        s.shutdown().await
    });
    let t = Instant::now();
    let mut conn = tokio::net::TcpStream::connect(addr).await?;
    let mut buf = vec![0u8; BUF];
    let mut total = 0u64;
    loop {
        let n = tokio::time::timeout(WAIT, conn.read(&mut buf)).await.context("loopback copy stalled")??;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    let elapsed = t.elapsed();
    server.await.context("loopback server")??;
    if total != bytes {
        bail!("loopback copy: {total} bytes, want {bytes}");
    }
    Ok(elapsed)
}

async fn port_forward(
    mut c: Cri,
    p: InPod,
    size_mib: u64,
    reps: usize,
    daemon: Option<u32>,
) -> Result<(Vec<Row>, Vec<String>)> {
    let want = size_mib << 20;
    // httpd is up once it serves the small page and the big file is in place.
    let probe = format!("test -e /www/big && wget -q -O /dev/null http://127.0.0.1:{WEB_PORT}/index.html");
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok((0, _)) = exec_sync(&mut c, &p.container, &["sh", "-c", &probe]).await {
            break;
        }
        if Instant::now() > deadline {
            bail!("httpd did not come up in the port-forward pod");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let section = format!("port-forward, one connection, {size_mib} MiB");
    let mut setup = Samples::default();
    // One untimed transfer (page cache, first connection).
    forward_once(&mut c, &p.pod.id, want, &mut Samples::default(), daemon).await?;
    let (mut fwd, mut ceil) = (Vec::new(), Vec::new());
    for _ in 0..reps.max(1) {
        fwd.push(rate(want, forward_once(&mut c, &p.pod.id, want, &mut setup, daemon).await?));
        ceil.push(rate(want, loopback(want).await?));
    }
    let (f, l) = (percentile(&fwd, 0.5), percentile(&ceil, 0.5));
    let mut rows = vec![
        Row {
            section: section.clone(),
            name: "throughput over port-forward".into(),
            unit: "MiB/s".into(),
            values: fwd,
        },
        Row {
            section: section.clone(),
            name: "loopback TCP copy in the bench (ceiling)".into(),
            unit: "MiB/s".into(),
            values: ceil,
        },
        Row::single(&section, "port-forward / ceiling", "%", 100.0 * f / l),
    ];
    rows.extend(setup.rows(&section));
    let notes = vec![format!(
        "port-forward {size_mib} MiB: {f:.0} MiB/s, {:.0}% of a loopback copy ({l:.0} MiB/s)",
        100.0 * f / l
    )];
    Ok((rows, notes))
}

// ---- memory per open exec session -----------------------------------------------------------

/// Processes of the container whose command line is `sleep 3600`.
async fn sleepers(c: &mut Cri, container: &str) -> Result<usize> {
    let script = "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done";
    let (code, out) = exec_sync(c, container, &["sh", "-c", script]).await?;
    if code != 0 {
        bail!("listing the container's processes: exit code {code}");
    }
    let want = SLEEPER.join(" ");
    Ok(out.lines().filter(|l| l.trim() == want).count())
}

async fn wait_sleepers(c: &mut Cri, container: &str, want: usize, timeout: Duration) -> Result<(usize, Duration)> {
    let t = Instant::now();
    loop {
        let n = sleepers(c, container).await?;
        if n == want || t.elapsed() > timeout {
            return Ok((n, t.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Opens `k` exec sessions of `sleep 3600` (Exec RPC, SPDY upgrade, the three streams each).
async fn open_k(c: &mut Cri, container: &str, k: usize) -> Result<Vec<RemoteCommand>> {
    let mut open = Vec::with_capacity(k);
    for _ in 0..k {
        let res = async {
            let url = exec_url(c, container, SLEEPER, Streams::OUT).await?;
            RemoteCommand::spdy("POST", &url, CRICTL_SPDY, Streams::OUT)
                .await
                .map_err(|e| anyhow::anyhow!("exec {SLEEPER:?}: {e}"))
        }
        .await;
        match res {
            Ok(rc) => open.push(rc),
            Err(e) => {
                close_all(open).await;
                return Err(e);
            }
        }
    }
    Ok(open)
}

/// The clients go away as crictl killed by ^C does: the connection closes (no GOAWAY).
async fn close_all(open: Vec<RemoteCommand>) {
    for rc in open {
        rc.abort().await;
    }
}

/// Memory per open session: RSS (and PSS) of the daemon and the shims before and while `k`
/// sessions are open; whether their processes end when the clients go away; and the RSS after
/// a second round (growth there would be a leak, not the allocator keeping its pages).
async fn open_sessions(mut c: Cri, p: InPod, k: usize, procs: &Procs<'_>) -> Result<(Vec<Row>, Vec<String>)> {
    let section = format!("exec sessions, {k} open (sleep 3600)");
    let mut notes = Vec::new();
    // The streaming paths once, so that what follows is the sessions' own memory.
    let mut warm = Samples::default();
    for _ in 0..3 {
        exec_true(&mut c, &p.container, &mut warm).await?;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let m0 = procs.mem();

    let t = Instant::now();
    let open = open_k(&mut c, &p.container, k).await?;
    let opened = t.elapsed();
    let (running, _) = match wait_sleepers(&mut c, &p.container, k, Duration::from_secs(30)).await {
        Ok(r) => r,
        Err(e) => {
            close_all(open).await;
            return Err(e);
        }
    };
    if running != k {
        notes.push(format!("exec sessions: {running} of {k} `sleep 3600` running"));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let m1 = procs.mem();

    close_all(open).await;
    let (left, took) = wait_sleepers(&mut c, &p.container, 0, Duration::from_secs(15)).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let m2 = procs.mem();

    // A second round, to tell a leak from pages the allocator keeps.
    let open = open_k(&mut c, &p.container, k).await?;
    wait_sleepers(&mut c, &p.container, k, Duration::from_secs(30)).await?;
    close_all(open).await;
    wait_sleepers(&mut c, &p.container, 0, Duration::from_secs(15)).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let m3 = procs.mem();

    let per = |a: u64, b: u64| (b as f64 - a as f64) / k.max(1) as f64;
    let mut rows = vec![Row::single(&section, &format!("open {k} sessions (wall)"), "s", opened.as_secs_f64())];
    if let (Some(d0), Some(d1)) = (m0.daemon, m1.daemon) {
        rows.push(Row::single(&section, "daemon RSS before", "MiB", mib(d0.rss_kib)));
        rows.push(Row::single(&section, &format!("daemon RSS with {k} sessions"), "MiB", mib(d1.rss_kib)));
        rows.push(Row::single(&section, "daemon RSS per session", "KiB", per(d0.rss_kib, d1.rss_kib)));
        rows.push(Row::single(
            &section,
            "daemon + shims RSS per session",
            "KiB",
            per(d0.rss_kib + m0.shims.rss_kib, d1.rss_kib + m1.shims.rss_kib),
        ));
    }
    rows.push(Row::single(&section, "shims RSS per session", "KiB", per(m0.shims.rss_kib, m1.shims.rss_kib)));
    rows.push(Row::single(&section, "shims PSS per session", "KiB", per(m0.shims.pss_kib, m1.shims.pss_kib)));
    rows.push(Row::single(&section, "shim processes with the sessions", "count", m1.shim_count as f64));
    rows.push(Row::single(&section, "`sleep 3600` left 15 s after the clients closed", "count", left as f64));
    if let (Some(d2), Some(d3)) = (m2.daemon, m3.daemon) {
        rows.push(Row::single(&section, "daemon RSS after closing", "MiB", mib(d2.rss_kib)));
        rows.push(Row::single(&section, "daemon RSS after a second round", "MiB", mib(d3.rss_kib)));
    }
    rows.push(Row::single(&section, "shims RSS after closing", "MiB", mib(m2.shims.rss_kib)));
    let kib = |m: &Mem| m.daemon.map(|d| d.rss_kib.to_string()).unwrap_or_else(|| "-".into());
    notes.push(format!(
        "exec sessions: daemon RSS {} -> {} -> {} -> {} KiB (before, open, closed, second round closed); \
         shims RSS {} -> {} -> {} -> {} KiB, {} -> {} -> {} -> {} processes",
        kib(&m0),
        kib(&m1),
        kib(&m2),
        kib(&m3),
        m0.shims.rss_kib,
        m1.shims.rss_kib,
        m2.shims.rss_kib,
        m3.shims.rss_kib,
        m0.shim_count,
        m1.shim_count,
        m2.shim_count,
        m3.shim_count
    ));
    if left == 0 {
        notes.push(format!(
            "exec sessions: every `sleep 3600` gone {:.1} s after the clients closed",
            took.as_secs_f64()
        ));
    } else {
        notes.push(format!(
            "exec sessions: {left} `sleep 3600` still running {:.0} s after the clients closed (they end with the pod)",
            took.as_secs_f64()
        ));
    }
    Ok((rows, notes))
}
