//! corral-bench: the same CRI and CNI sequences against any runtime, timed.
//!
//!     corral-bench cri --socket S --label L --json L.json [--scenarios idle,pod,...] ...
//!     corral-bench cni --conflist F --bin-dir D --label L --json L.json
//!     corral-bench report A.json B.json
//!
//! `cri` and `cni` print their own rows (min, median, p90, max) and append them to the JSON file,
//! so one file gathers a runtime's results over several runs; `report` prints two runtimes side
//! by side with the ratio of medians. hack/bench.sh runs the whole comparison.
#![deny(unsafe_code)]

mod cni;
mod cri;
mod leftovers;
mod procmem;
mod stats;
mod stream;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use crate::procmem::mib;
use crate::stats::{Results, Row};

#[derive(Parser)]
#[command(name = "corral-bench", about = "Time the same CRI and CNI sequences against any runtime")]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// CRI scenarios against one runtime's socket.
    Cri(Box<CriArgs>),
    /// ADD then DEL of a CNI plugin chain (a conflist).
    Cni(CniArgs),
    /// Two runtimes' results side by side, with the ratio a/b of medians.
    Report { a: PathBuf, b: PathBuf },
}

#[derive(clap::Args)]
struct CriArgs {
    /// The runtime's CRI unix socket.
    #[arg(long)]
    socket: PathBuf,
    /// The runtime's name in tables.
    #[arg(long)]
    label: String,
    /// Append the results to this JSON file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Comma-separated, run in this order: idle, pod, container, pull, density, stream (Exec and
    /// PortForward through the streaming server; after density, whose daemon RSS would
    /// otherwise include the sessions' freed memory the allocator keeps), leftovers (removes all
    /// pods, then checks), cleanup (only removes all pods).
    #[arg(long, default_value = "idle,pod,container,pull,density,stream,leftovers", value_delimiter = ',')]
    scenarios: Vec<String>,
    /// Iterations of each lifecycle scenario.
    #[arg(short, long, default_value_t = 50)]
    n: usize,
    /// Concurrent workers of the parallel runs (and of density).
    #[arg(short, long, default_value_t = 2)]
    parallelism: usize,
    /// Pods of the density scenario.
    #[arg(long, default_value_t = 100)]
    pods: usize,
    /// Exec sessions kept open at once by the stream scenario (memory per session).
    #[arg(long, default_value_t = 50)]
    stream_sessions: usize,
    /// MiB moved through one port-forwarded connection by the stream scenario.
    #[arg(long, default_value_t = 100)]
    stream_mib: u64,
    /// Port-forward transfers (and loopback copies) of the stream scenario; the median counts.
    #[arg(long, default_value_t = 3)]
    stream_reps: usize,
    /// Cold and warm pulls of the pull scenario.
    #[arg(long, default_value_t = 5)]
    pull_reps: usize,
    /// The benchmark containers' image (has `sh`, `sleep`, `true`).
    #[arg(long)]
    image: String,
    /// The pull scenario's image.
    #[arg(long)]
    pull_image: Option<String>,
    /// Images to pull (untimed) before anything else, e.g. the reference runtime's pause image.
    #[arg(long)]
    pre_pull: Vec<String>,
    /// The runtime daemon's pid, for its memory.
    #[arg(long)]
    daemon_pid: Option<u32>,
    /// Program name of the runtime's shims (corral-shim, containerd-shim-runc-v2).
    #[arg(long)]
    shim_name: Option<String>,
    /// Count only shims whose command line contains this (the runtime's state dir or socket).
    #[arg(long)]
    shim_match: Option<String>,
    /// Cgroup parent prefix sent in the pods' CRI config (`<prefix>/<pod name>`), as kubelet does.
    #[arg(long, default_value = "")]
    cgroup_parent: String,
    /// Where pod log directories are made.
    #[arg(long, default_value = "/tmp/corral-bench-logs")]
    log_dir: PathBuf,
    /// Leftover mounts are looked for under these directories (the runtime's root and state).
    #[arg(long)]
    watch_dir: Vec<PathBuf>,
    /// The pod network's bridge (leftover veths).
    #[arg(long)]
    bridge: Option<String>,
    /// The pod network's host-local dataDir (leftover IP allocations).
    #[arg(long)]
    cni_data_dir: Option<PathBuf>,
    /// A cgroup (from the hierarchy root) whose sub-cgroups are leftovers (the runtime's
    /// cgroup parent).
    #[arg(long)]
    watch_cgroup: Option<String>,
    /// Netns names (one a line, `ls /var/run/netns`) from before the runtime started; without
    /// it, new netns are counted from this run's start.
    #[arg(long)]
    netns_baseline: Option<PathBuf>,
}

#[derive(clap::Args)]
struct CniArgs {
    #[arg(long)]
    conflist: PathBuf,
    /// Directory of the chain's plugin binaries (CNI_PATH).
    #[arg(long)]
    bin_dir: PathBuf,
    #[arg(long)]
    label: String,
    #[arg(long)]
    json: Option<PathBuf>,
    #[arg(short, long, default_value_t = 50)]
    n: usize,
    /// First hostPort of the port mapping passed to plugins with the portMappings capability.
    #[arg(long, default_value_t = 31000)]
    port_base: u16,
    /// The conflist's bridge, deleted at the end (the chain creates it on the first ADD).
    #[arg(long)]
    bridge: Option<String>,
}

fn random_tag() -> String {
    let mut b = [0u8; 4];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut b);
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::main]
async fn main() -> Result<()> {
    match Args::parse().command {
        Cmd::Cri(a) => run_cri(*a).await,
        Cmd::Cni(a) => run_cni(a),
        Cmd::Report { a, b } => {
            let (a, b) = (Results::load_or_new(&a, "a")?, Results::load_or_new(&b, "b")?);
            stats::print_comparison(&a, &b);
            Ok(())
        }
    }
}

fn save(path: &Option<PathBuf>, label: &str, rows: Vec<Row>, notes: Vec<String>) -> Result<()> {
    stats::print_rows(label, &rows);
    for n in &notes {
        println!("  note: {n}");
    }
    if let Some(p) = path {
        let mut r = Results::load_or_new(p, label)?;
        r.rows.extend(rows);
        r.notes.extend(notes);
        r.save(p)?;
    }
    Ok(())
}

async fn run_cri(a: CriArgs) -> Result<()> {
    let netns_before: BTreeSet<String> = match &a.netns_baseline {
        Some(p) => std::fs::read_to_string(p)
            .with_context(|| format!("reading {}", p.display()))?
            .lines()
            .map(String::from)
            .collect(),
        None => leftovers::netns_names(),
    };
    let c = cri::connect_ready(&a.socket, Duration::from_secs(60)).await?;
    let o = cri::Opts {
        image: a.image.clone(),
        n: a.n,
        pods: a.pods,
        cgroup_parent: a.cgroup_parent.clone(),
        log_dir: a.log_dir.clone(),
        tag: random_tag(),
    };
    let shims = || a.shim_name.as_deref().map(|n| procmem::find(n, a.shim_match.as_deref())).unwrap_or_default();
    let daemon = || a.daemon_pid.and_then(procmem::mem);
    for image in &a.pre_pull {
        c.clone().pull(image).await?;
    }
    let par = a.parallelism;
    for scenario in &a.scenarios {
        let mut rows = Vec::new();
        let mut notes = Vec::new();
        eprintln!("corral-bench: {} {scenario}", a.label);
        match scenario.as_str() {
            "idle" => {
                let m = daemon().context("--daemon-pid: no such process")?;
                rows.push(Row::single("memory", "daemon RSS idle", "MiB", mib(m.rss_kib)));
                rows.push(Row::single("memory", "daemon PSS idle", "MiB", mib(m.pss_kib)));
            }
            "pod" | "container" => {
                c.clone().pull(&a.image).await?;
                let warm = cri::Opts { n: 1, ..o.clone() };
                let run = |o: cri::Opts, p: usize, label: &'static str| {
                    let c = c.clone();
                    let pod = scenario == "pod";
                    async move {
                        if pod {
                            cri::pod_lifecycle(&c, &o, p, label).await
                        } else {
                            cri::container_lifecycle(&c, &o, p, label).await
                        }
                    }
                };
                run(warm, 1, "warmup").await?;
                let what = if scenario == "pod" { "pod lifecycle" } else { "container in a ready pod" };
                rows.extend(run(o.clone(), 1, "serial").await?.rows(&format!("{what}, serial")));
                rows.extend(run(o.clone(), par, "par").await?.rows(&format!("{what}, parallelism {par}")));
            }
            "stream" => {
                let so = stream::StreamOpts {
                    n: a.n,
                    sessions: a.stream_sessions,
                    pf_mib: a.stream_mib,
                    pf_reps: a.stream_reps,
                };
                let procs = stream::Procs { daemon: a.daemon_pid, shims: &shims };
                let (r, n) = stream::run(&c, &o, &so, &procs).await?;
                rows.extend(r);
                notes.extend(n);
            }
            "pull" => {
                let image = a.pull_image.as_deref().context("the pull scenario needs --pull-image")?;
                rows.extend(cri::pull(&c, image, a.pull_reps).await?.rows("image pull"));
            }
            "density" => {
                c.clone().pull(&a.image).await?;
                let section = format!("density, {} pods", a.pods);
                let (pods, started) = cri::start_pods(&c, &o, par).await?;
                rows.push(Row::single(
                    &section,
                    &format!("start {} pods with a container (wall)", a.pods),
                    "s",
                    started.as_secs_f64(),
                ));
                tokio::time::sleep(Duration::from_secs(2)).await;
                if let Some(m) = daemon() {
                    rows.push(Row::single(&section, "daemon RSS", "MiB", mib(m.rss_kib)));
                    rows.push(Row::single(&section, "daemon PSS", "MiB", mib(m.pss_kib)));
                }
                let (m, n) = procmem::total(&shims());
                let per = |kib: u64| mib(kib) / a.pods.max(1) as f64;
                rows.push(Row::single(&section, "shim processes", "count", n as f64));
                rows.push(Row::single(&section, "shims RSS total", "MiB", mib(m.rss_kib)));
                rows.push(Row::single(&section, "shims PSS total", "MiB", mib(m.pss_kib)));
                rows.push(Row::single(&section, "shim RSS per pod", "MiB", per(m.rss_kib)));
                rows.push(Row::single(&section, "shim PSS per pod", "MiB", per(m.pss_kib)));
                if n > 0 {
                    rows.push(Row::single(&section, "RSS per shim process", "MiB", mib(m.rss_kib) / n as f64));
                }
                let removed = cri::remove_pods(&c, pods, par).await?;
                rows.push(Row::single(
                    &section,
                    &format!("stop + remove {} pods (wall)", a.pods),
                    "s",
                    removed.as_secs_f64(),
                ));
            }
            "leftovers" => {
                let pods = c.clone().remove_all_pods().await?;
                if pods > 0 {
                    notes.push(format!("{pods} pods were still there and removed before the check"));
                }
                let watch = leftovers::Watch {
                    dirs: a.watch_dir.clone(),
                    bridge: a.bridge.clone(),
                    cni_data_dir: a.cni_data_dir.clone(),
                    cgroup: a.watch_cgroup.clone(),
                };
                // Shims may take a moment to exit after their container is removed.
                let deadline = Instant::now() + Duration::from_secs(10);
                let found = loop {
                    let found = leftovers::check(&watch, &netns_before, &shims());
                    if found.is_empty() || Instant::now() > deadline {
                        break found;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                };
                rows.push(Row::single(
                    "leftovers",
                    "kinds of leftovers after removing all pods",
                    "count",
                    found.len() as f64,
                ));
                if found.is_empty() {
                    notes.push("leftovers: none (mounts, netns, veths, IP allocations, shims)".into());
                }
                notes.extend(found.into_iter().map(|f| format!("leftover: {f}")));
                if let Some(m) = daemon() {
                    rows.push(Row::single("memory", "daemon RSS at the end", "MiB", mib(m.rss_kib)));
                }
            }
            "cleanup" => {
                let pods = c.clone().remove_all_pods().await?;
                eprintln!("corral-bench: {}: removed {pods} pods", a.label);
                continue;
            }
            other => {
                bail!("unknown scenario {other:?} (idle, pod, container, stream, pull, density, leftovers, cleanup)")
            }
        }
        save(&a.json, &a.label, rows, notes)?;
    }
    Ok(())
}

fn run_cni(a: CniArgs) -> Result<()> {
    let chain = cni::Chain::load(&a.conflist, &a.bin_dir)?;
    let res = cni::bench(&chain, a.n, &random_tag(), a.port_base);
    if let Some(b) = &a.bridge {
        let _ = std::process::Command::new("ip").args(["link", "del", b]).stderr(std::process::Stdio::null()).status();
    }
    save(&a.json, &a.label, res?.rows("CNI chain ADD then DEL (1 hostPort)"), Vec::new())
}
