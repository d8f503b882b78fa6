//! The CRI image service of a real corrald, driven from outside: pulls of every test image from
//! the local registries, lookups, removal and garbage collection, filesystem usage, references,
//! authentication, mirrors, faults from the fake registry (corrupt, truncated and hostile
//! layers, stalls, 404s, bearer tokens), concurrency, restarts and crashes, the root lock, and
//! the runtime's Version/Status/RuntimeConfig.
//!
//! Tests that pull need root (unpacking sets owners and makes whiteout device nodes); tests that
//! need the local registries skip when `CORRAL_TEST_REGISTRY` is unset. `hack/test.sh` runs
//! them all as root with the registries up.

use std::collections::BTreeSet;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use tests::cri_api::v1 as cri;
use tests::fake_registry::{blob_path, manifest_path, BearerAuth, Behavior, FakeRegistry, Gate, Route};
use tests::oci::{self, Entry, Image, Index, Layer};
use tests::tonic::Code;
use tests::{require_env, require_root, rpc, snapshots_of, wait_for, Corrald, Overlay, TestEnv};

/// How long corrald may take to clean up after a failed pull.
const CLEANUP: Duration = Duration::from_secs(10);

// ---- helpers ----------------------------------------------------------------------------------

fn code<T: std::fmt::Debug>(r: &Result<T, tests::tonic::Status>) -> Code {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(s) => s.code(),
    }
}

fn is_char_dev_0_0(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_char_device() && m.rdev() == 0)
}

/// Pulls `name` (`corral/busybox:latest`) from the open registry and checks what every pull
/// must give: the id (config digest), tag, digest, size, and the verbose info with one
/// `<root>/snapshots/<n>/fs` per layer, top first.
async fn pull_and_check(c: &Corrald, env: &TestEnv, name: &str) -> (cri::Image, serde_json::Value) {
    let info = env.info(name);
    let reference = env.image(name);
    let id = c.pull(&reference).await.unwrap_or_else(|e| panic!("pull {reference}: {e:?}"));
    assert_eq!(id, info.config_digest, "PullImage returns the config digest as image_ref");
    let (img, v) =
        c.status_verbose(&reference).await.unwrap_or_else(|| panic!("ImageStatus {reference} after pull is None"));
    assert_eq!(img.id, id);
    assert!(img.repo_tags.contains(&reference), "repo_tags {:?} lack {reference}", img.repo_tags);
    let repo = reference.rsplit_once(':').unwrap().0;
    let digest_ref = format!("{repo}@{}", info.manifest_digest);
    assert!(img.repo_digests.contains(&digest_ref), "repo_digests {:?} lack {digest_ref}", img.repo_digests);
    assert!(img.size > 0, "image size is 0");
    assert_eq!(img.spec.as_ref().map(|s| s.image.as_str()), Some(id.as_str()));

    assert_eq!(v["id"], id.as_str());
    assert_eq!(v["manifestDigest"], info.host_manifest_digest.as_deref().unwrap_or(&info.manifest_digest));
    assert_eq!(v["imageSpec"]["rootfs"]["diff_ids"], serde_json::json!(info.diff_ids), "imageSpec is the image config");
    let chain = v["chainIDs"].as_array().expect("chainIDs");
    assert_eq!(chain.len(), info.diff_ids.len());
    assert_eq!(chain[0], info.diff_ids[0].as_str(), "the bottom chain id is the bottom diff id");
    let layers = snapshots_of(&v);
    assert_eq!(layers.len(), info.layers.len(), "one snapshot per layer: {layers:?}");
    let snapshots = c.root.join("snapshots");
    for l in &layers {
        assert_eq!(l.file_name().unwrap(), "fs", "{}", l.display());
        let n = l.parent().unwrap();
        assert_eq!(n.parent().unwrap(), snapshots, "{} is not under {}", l.display(), snapshots.display());
        assert!(
            n.file_name().unwrap().to_str().unwrap().parse::<u64>().is_ok(),
            "snapshot dir {} is not a number",
            n.display()
        );
        assert!(l.is_dir(), "{} is missing", l.display());
    }
    let distinct: BTreeSet<&PathBuf> = layers.iter().collect();
    assert_eq!(distinct.len(), layers.len(), "each layer has its own snapshot: {layers:?}");
    (img, v)
}

/// After a failed pull of `reference`: no image for it, nothing in `<root>/tmp`, and exactly the
/// snapshot dirs that existed before.
async fn assert_failed_cleanly(
    c: &Corrald,
    reference: &str,
    snapshots_before: &BTreeSet<String>,
    images_before: usize,
) {
    assert!(c.status(reference).await.is_none(), "a failed pull recorded {reference}");
    assert_eq!(c.list().await.len(), images_before, "a failed pull changed the image list");
    let tmp_clean = wait_for(CLEANUP, || c.tmp_names().is_empty()).await;
    assert!(tmp_clean, "a failed pull left temp files in {}: {:?}", c.root.join("tmp").display(), c.tmp_names());
    let snaps_clean = wait_for(CLEANUP, || c.snapshot_names() == *snapshots_before).await;
    assert!(snaps_clean, "a failed pull left snapshot dirs: before {snapshots_before:?}, now {:?}", c.snapshot_names());
}

fn read(p: impl AsRef<Path>) -> String {
    let p = p.as_ref();
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

// ---- runtime service --------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_status_and_runtime_config() {
    // no CNI config at all, whatever the host has in /etc/cni/net.d
    let cni = tempfile::Builder::new().prefix("corral-it-cni.").tempdir().unwrap();
    let c = Corrald::with_config(&format!("cni_conf_dir = {:?}\n", cni.path().display().to_string())).await;
    let mut rt = c.runtime();
    let v = rpc(rt.version(cri::VersionRequest { version: "v1".into() })).await.expect("Version").into_inner();
    assert_eq!(v.runtime_name, "corral");
    assert_eq!(v.runtime_api_version, "v1");
    assert!(!v.runtime_version.is_empty());
    assert!(!v.version.is_empty());

    let s = rpc(rt.status(cri::StatusRequest { verbose: false })).await.expect("Status").into_inner();
    let conds = s.status.expect("RuntimeStatus").conditions;
    let get = |t: &str| {
        conds.iter().find(|c| c.r#type == t).unwrap_or_else(|| panic!("no {t} condition in {conds:?}")).clone()
    };
    assert!(get("RuntimeReady").status, "RuntimeReady is false");
    let net = get("NetworkReady");
    assert!(!net.status, "NetworkReady is true without pod networking");
    assert_eq!(net.reason, "NetworkPluginNotReady");
    assert!(!net.message.is_empty());

    let rc = rpc(rt.runtime_config(cri::RuntimeConfigRequest {})).await.expect("RuntimeConfig").into_inner();
    assert_eq!(rc.linux.expect("linux config").cgroup_driver, cri::CgroupDriver::Cgroupfs as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unimplemented_rpcs_say_so() {
    // CheckpointContainer is the RPC corral leaves for last (pods and containers are landing)
    let c = Corrald::start().await;
    let mut rt = c.runtime();
    let r = rpc(rt.checkpoint_container(cri::CheckpointContainerRequest {
        container_id: "x".into(),
        location: "/tmp/x.tar".into(),
        timeout: 10,
    }))
    .await;
    assert_eq!(code(&r), Code::Unimplemented, "{r:?}");
    assert!(r.unwrap_err().message().contains("CheckpointContainer"), "the message names the RPC");
    // corrald is still serving
    rpc(rt.version(cri::VersionRequest::default())).await.expect("Version after Unimplemented");
}

// ---- pulls of every test image ----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_busybox() {
    require_root!();
    let env = require_env!();
    let c = Corrald::start().await;
    let (img, v) = pull_and_check(&c, &env, "corral/busybox:latest").await;
    assert_eq!(img.repo_tags, vec![env.image("corral/busybox:latest")]);
    assert_eq!(img.username, "");
    assert!(img.uid.is_none());
    let fs = &snapshots_of(&v)[0];
    let busybox = std::fs::metadata(fs.join("bin/busybox")).expect("bin/busybox");
    assert!(busybox.is_file() && busybox.len() > 100_000 && busybox.mode() & 0o111 != 0);
    assert_eq!(std::fs::read_link(fs.join("bin/sh")).expect("bin/sh is a symlink"), PathBuf::from("busybox"));
    assert!(read(fs.join("etc/passwd")).starts_with("root:x:0:0:"));
    assert_eq!(std::fs::metadata(fs.join("tmp")).unwrap().mode() & 0o7777, 0o1777);
    assert_eq!(v["imageSpec"]["config"]["Cmd"], serde_json::json!(["sh"]));
    assert_eq!(c.list().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_nonroot_reports_its_user() {
    require_root!();
    let env = require_env!();
    let c = Corrald::start().await;
    let (img, v) = pull_and_check(&c, &env, "corral/nonroot:latest").await;
    assert_eq!(img.username, "corral");
    assert!(img.uid.is_none(), "uid is set for a user name: {:?}", img.uid);
    assert_eq!(v["imageSpec"]["config"]["User"], "corral");
    assert_eq!(v["imageSpec"]["config"]["WorkingDir"], "/home/corral");
    let ov = Overlay::mount(&snapshots_of(&v));
    assert!(read(ov.path().join("etc/passwd")).contains("corral:x:1000:1000:"));
    let home = std::fs::metadata(ov.path().join("home/corral")).expect("/home/corral");
    assert_eq!((home.uid(), home.gid()), (1000, 1000), "layer ownership is kept");
    assert!(ov.path().join("bin/busybox").is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_layered_applies_whiteouts() {
    require_root!();
    let env = require_env!();
    let c = Corrald::start().await;
    let (_, v) = pull_and_check(&c, &env, "corral/layered:latest").await;
    let layers = snapshots_of(&v);
    assert_eq!(layers.len(), 3);
    // the middle layer holds the overlay forms of the whiteouts
    assert!(is_char_dev_0_0(&layers[1].join("etc/corral-removed")), "no 0/0 whiteout device for etc/corral-removed");
    assert!(!layers[1].join("etc/.wh.corral-removed").exists(), "the .wh. file itself was unpacked");
    assert!(!layers[1].join("data/.wh..wh..opq").exists(), "the opaque marker file itself was unpacked");

    let ov = Overlay::mount(&layers);
    let root = ov.path();
    assert!(!root.join("etc/corral-removed").exists(), "/etc/corral-removed survived its whiteout");
    assert!(std::fs::symlink_metadata(root.join("etc/corral-removed")).is_err());
    let data: BTreeSet<String> = tests::dir_names(&root.join("data"));
    assert_eq!(data, BTreeSet::from(["new".to_string()]), "the opaque /data holds only its own entries");
    assert_eq!(read(root.join("data/new")), "new\n");
    assert_eq!(read(root.join("layer3")), "3\n");
    assert!(root.join("bin/busybox").is_file());
    assert!(root.join("etc/passwd").is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_zstd() {
    require_root!();
    let env = require_env!();
    let c = Corrald::start().await;
    let (_, v) = pull_and_check(&c, &env, "corral/zstd:latest").await;
    let ov = Overlay::mount(&snapshots_of(&v));
    assert_eq!(read(ov.path().join("zstd-marker")), "zstd\n");
    assert!(ov.path().join("bin/busybox").is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_uncompressed_layer() {
    require_root!();
    let env = require_env!();
    let c = Corrald::start().await;
    let (_, v) = pull_and_check(&c, &env, "corral/plain:latest").await;
    let fs = &snapshots_of(&v)[0];
    assert!(fs.join("bin/busybox").is_file());
    assert_eq!(std::fs::read_link(fs.join("bin/ls")).unwrap(), PathBuf::from("busybox"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_docker_schema2() {
    require_root!();
    let env = require_env!();
    let c = Corrald::start().await;
    let (img, v) = pull_and_check(&c, &env, "corral/docker:latest").await;
    // the same config as corral/busybox, so the same image id
    assert_eq!(img.id, env.info("corral/busybox:latest").config_digest);
    assert!(snapshots_of(&v)[0].join("bin/busybox").is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_multiarch_picks_this_host() {
    require_root!();
    let env = require_env!();
    let c = Corrald::start().await;
    let info = env.info("corral/multiarch:latest");
    let (img, v) = pull_and_check(&c, &env, "corral/multiarch:latest").await;
    // repo digest: the index; manifestDigest: this host's manifest
    let index_ref = format!("{}/corral/multiarch@{}", env.registry, info.manifest_digest);
    assert_eq!(img.repo_digests, vec![index_ref]);
    assert_eq!(v["manifestDigest"], info.host_manifest_digest.clone().expect("host_manifest_digest").as_str());
    assert_eq!(v["imageSpec"]["architecture"], tests::host_arch());
    assert_eq!(v["imageSpec"]["os"], "linux");
    let ov = Overlay::mount(&snapshots_of(&v));
    assert_eq!(read(ov.path().join("arch")), format!("{}\n", tests::host_arch()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_multilayer() {
    require_root!();
    let env = require_env!();
    let c = Corrald::start().await;
    let (_, v) = pull_and_check(&c, &env, "corral/multilayer:latest").await;
    let layers = snapshots_of(&v);
    assert_eq!(layers.len(), 5);
    let ov = Overlay::mount(&layers);
    for n in 1..=4 {
        let m = std::fs::metadata(ov.path().join(format!("blob{n}"))).unwrap_or_else(|e| panic!("/blob{n}: {e}"));
        assert_eq!(m.len(), 1 << 20);
    }
    assert!(ov.path().join("bin/busybox").is_file());
}

// ---- shared layers, lookups, removal, usage ---------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_layers_and_removal_gc() {
    require_root!();
    let env = require_env!();
    let c = Corrald::start().await;
    let busybox = env.image("corral/busybox:latest");
    let nonroot = env.image("corral/nonroot:latest");
    let multilayer = env.image("corral/multilayer:latest");
    pull_and_check(&c, &env, "corral/busybox:latest").await;
    pull_and_check(&c, &env, "corral/nonroot:latest").await;
    pull_and_check(&c, &env, "corral/multilayer:latest").await;
    let b = c.layer_dirs(&busybox).await;
    let n = c.layer_dirs(&nonroot).await;
    let m = c.layer_dirs(&multilayer).await;
    // busybox's only layer is the bottom of nonroot and multilayer: one snapshot dir for all
    assert_eq!(n.last(), b.last(), "nonroot and busybox share their bottom layer");
    assert_eq!(m.last(), b.last(), "multilayer and busybox share their bottom layer");
    assert_eq!(c.snapshot_names().len(), 1 + 1 + 4, "every distinct layer unpacked once");
    assert_eq!(c.list().await.len(), 3);

    // removing nonroot by tag takes its own layer, keeps the shared one
    c.remove(&nonroot).await.expect("RemoveImage nonroot");
    assert!(c.status(&nonroot).await.is_none(), "nonroot still there after RemoveImage");
    assert!(!n[0].exists(), "nonroot's own layer {} survived its removal", n[0].display());
    assert!(!n[0].parent().unwrap().exists(), "the snapshot dir of nonroot's layer survived");
    assert!(b[0].join("bin/busybox").is_file(), "the shared layer went with nonroot");
    assert!(c.status(&busybox).await.is_some());
    assert_eq!(c.list().await.len(), 2);

    // multilayer by id: its four own layers go, the shared one stays
    let mid = c.status(&multilayer).await.unwrap().id;
    c.remove(&mid).await.expect("RemoveImage multilayer by id");
    for l in &m[..4] {
        assert!(!l.exists(), "{} survived", l.display());
    }
    assert!(b[0].is_dir());

    // the last image: everything goes, blobs too
    let bid = c.status(&busybox).await.unwrap().id;
    c.remove(&bid).await.expect("RemoveImage busybox by id");
    assert!(c.list().await.is_empty());
    assert!(c.snapshot_names().is_empty(), "snapshots left: {:?}", c.snapshot_names());
    assert!(c.blob_names().is_empty(), "blobs left: {:?}", c.blob_names());
    assert!(c.tmp_names().is_empty());

    // and they come back
    pull_and_check(&c, &env, "corral/nonroot:latest").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_list_and_remove_by_every_name() {
    require_root!();
    let env = require_env!();
    let c = Corrald::start().await;
    let info = env.info("corral/busybox:latest");
    let tag = env.image("corral/busybox:latest");
    let digest_ref = format!("{}/corral/busybox@{}", env.registry, info.manifest_digest);
    let id = info.config_digest.clone();
    let hex = id.strip_prefix("sha256:").unwrap().to_string();
    c.pull(&tag).await.expect("pull");

    for name in [
        tag.clone(),
        digest_ref.clone(),
        id.clone(),
        hex.clone(),
        hex[..12].to_string(),
        format!("sha256:{}", &hex[..12]),
    ] {
        let img = c.status(&name).await.unwrap_or_else(|| panic!("ImageStatus by {name} found nothing"));
        assert_eq!(img.id, id, "ImageStatus by {name}");
        let listed = c.list_filtered(&name).await;
        assert_eq!(
            listed.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
            vec![id.as_str()],
            "ListImages filtered by {name}"
        );
    }
    // unknown images are None, not errors; filters on them list nothing
    let other = format!("sha256:{}", "0".repeat(64));
    for name in [
        env.image("corral/busybox:nope"),
        env.image("corral/nothere:latest"),
        other.clone(),
        format!("{}/corral/busybox@{other}", env.registry),
    ] {
        assert!(c.status(&name).await.is_none(), "ImageStatus of unknown {name} is not None");
        assert!(c.list_filtered(&name).await.is_empty(), "ListImages filtered by unknown {name}");
    }
    let all = c.list().await;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].id, id);
    assert_eq!(all[0].repo_tags, vec![tag.clone()]);
    assert_eq!(all[0].repo_digests, vec![digest_ref.clone()]);

    // removal by digest reference, by id prefix, by bare id
    for name in [digest_ref.clone(), hex[..12].to_string(), hex.clone()] {
        c.remove(&name).await.unwrap_or_else(|e| panic!("RemoveImage {name}: {e:?}"));
        assert!(c.status(&tag).await.is_none(), "RemoveImage {name} left the image");
        assert!(c.list().await.is_empty());
        c.pull(&tag).await.expect("pull again");
    }

    // removing what is not there succeeds
    c.remove(&other).await.expect("RemoveImage of an unknown id");
    c.remove(&env.image("corral/nothere:latest")).await.expect("RemoveImage of an unknown tag");
    assert_eq!(c.list().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_image_many_tags_goes_whole() {
    require_root!();
    let env = require_env!();
    let c = Corrald::start().await;
    // corral/busybox and corral/docker share their config: one image, two tags, two digests
    let busybox = env.image("corral/busybox:latest");
    let docker = env.image("corral/docker:latest");
    let id1 = c.pull(&busybox).await.expect("pull busybox");
    let id2 = c.pull(&docker).await.expect("pull docker");
    assert_eq!(id1, id2);
    let all = c.list().await;
    assert_eq!(all.len(), 1, "one image for one config: {all:?}");
    let tags: BTreeSet<&String> = all[0].repo_tags.iter().collect();
    assert_eq!(tags, BTreeSet::from([&busybox, &docker]));
    assert_eq!(all[0].repo_digests.len(), 2);
    c.remove(&docker).await.expect("RemoveImage by one tag");
    assert!(c.status(&busybox).await.is_none(), "RemoveImage by one tag removes the image with all its tags");
    assert!(c.list().await.is_empty());
    assert!(c.snapshot_names().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_fs_info_follows_pulls_and_removals() {
    require_root!();
    let env = require_env!();
    let c = Corrald::start().await;
    let empty = c.fs_info().await;
    assert_eq!(empty.fs_id.as_ref().expect("fs_id").mountpoint, c.root.join("snapshots").display().to_string());
    assert!(empty.timestamp > 0);
    let bytes = |u: &cri::FilesystemUsage| u.used_bytes.as_ref().expect("used_bytes").value;
    let inodes = |u: &cri::FilesystemUsage| u.inodes_used.as_ref().expect("inodes_used").value;

    c.pull(&env.image("corral/busybox:latest")).await.expect("pull busybox");
    let one = c.fs_info().await;
    assert!(
        bytes(&one) > bytes(&empty) + 100_000,
        "bytes did not grow with busybox: {} -> {}",
        bytes(&empty),
        bytes(&one)
    );
    assert!(
        inodes(&one) > inodes(&empty) + 100,
        "inodes did not grow with busybox: {} -> {}",
        inodes(&empty),
        inodes(&one)
    );

    c.pull(&env.image("corral/multilayer:latest")).await.expect("pull multilayer");
    let two = c.fs_info().await;
    assert!(
        bytes(&two) >= bytes(&one) + 4 * (1 << 20),
        "4 MiB of layers did not count: {} -> {}",
        bytes(&one),
        bytes(&two)
    );
    assert!(inodes(&two) > inodes(&one));

    c.remove(&env.image("corral/multilayer:latest")).await.expect("remove multilayer");
    let back = c.fs_info().await;
    assert!(bytes(&back) < bytes(&two));
    assert_eq!(bytes(&back), bytes(&one), "removing multilayer gives back exactly what it took");
    c.remove(&env.image("corral/busybox:latest")).await.expect("remove busybox");
    let none = c.fs_info().await;
    assert_eq!((bytes(&none), inodes(&none)), (bytes(&empty), inodes(&empty)));
}

// ---- references -------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn references_are_normalized() {
    require_root!();
    let env = require_env!();
    let c = Corrald::start().await;
    let info = env.info("corral/busybox:latest");
    let bare = format!("{}/corral/busybox", env.registry);
    let id = c.pull(&bare).await.expect("pull without a tag");
    assert_eq!(id, info.config_digest);
    let img = c.status(&bare).await.expect("ImageStatus without a tag");
    assert_eq!(img.repo_tags, vec![format!("{bare}:latest")], "the default tag is latest");

    // by digest: no new tag, the digest reference resolves
    let c2 = Corrald::start().await;
    let by_digest = format!("{bare}@{}", info.manifest_digest);
    assert_eq!(c2.pull(&by_digest).await.expect("pull by digest"), info.config_digest);
    let img = c2.status(&by_digest).await.expect("ImageStatus by digest");
    assert!(img.repo_tags.is_empty(), "a pull by digest added tags {:?}", img.repo_tags);
    assert_eq!(img.repo_digests, vec![by_digest.clone()]);
    assert!(c2.status(&format!("{bare}:latest")).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_references_are_invalid_arguments() {
    // every bad reference names the fake registry, so even one wrongly accepted stays local
    let fake = FakeRegistry::start().await;
    let h = fake.host();
    let c = Corrald::start().await;
    let bad = [
        String::new(),
        format!("{h}/Busybox"),
        format!("{h}/busybox:"),
        format!("{h}/busybox:bad!tag"),
        format!("{h}/busybox:-tag"),
        format!("{h}/busybox@sha256:abc"),
        format!("{h}/busybox@md5:0123"),
        format!("{h}/a//b"),
        format!("{h}/-a"),
        format!("{h}/a b"),
        format!("{h}/"),
        format!("{h}/busybox:{}", "t".repeat(200)),
        "127.0.0.1:99999/busybox".into(),
    ];
    for name in &bad {
        let r = c.pull(name).await;
        assert_eq!(code(&r), Code::InvalidArgument, "PullImage {name:?}: {r:?}");
    }
    assert!(fake.requests().is_empty(), "a malformed reference reached the registry: {:?}", fake.requests());
    let r = rpc(c.images().pull_image(cri::PullImageRequest::default())).await;
    assert_eq!(code(&r), Code::InvalidArgument, "PullImage without an image spec");
    assert!(c.list().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_images_are_not_found() {
    require_root!();
    let env = require_env!();
    let c = Corrald::start().await;
    for name in [
        env.image("corral/busybox:nope"),
        env.image("corral/nothere:latest"),
        format!("{}/corral/busybox@sha256:{}", env.registry, "1".repeat(64)),
    ] {
        let r = c.pull(&name).await;
        assert_eq!(code(&r), Code::NotFound, "PullImage {name}: {r:?}");
    }
    // the fake registry: a 404 manifest
    let fake = FakeRegistry::start().await;
    fake.set_route(
        &manifest_path("gone/image", "latest"),
        Route::status(404, r#"{"errors":[{"code":"MANIFEST_UNKNOWN"}]}"#),
    );
    let r = c.pull(&fake.reference("gone/image", "latest")).await;
    assert_eq!(code(&r), Code::NotFound, "{r:?}");
    assert!(r.unwrap_err().message().contains(&fake.host()), "the error names the registry");
    assert!(c.list().await.is_empty());
    assert!(c.snapshot_names().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_platform_is_not_found() {
    require_root!();
    let fake = FakeRegistry::start().await;
    let c = Corrald::start().await;
    let others: Vec<&str> =
        ["arm64", "amd64", "s390x", "riscv64"].into_iter().filter(|a| *a != tests::host_arch()).take(2).collect();
    let images = others
        .iter()
        .map(|a| (a.to_string(), Image::for_arch(vec![Layer::new(&[Entry::file("arch", *a)])], a)))
        .collect();
    fake.push_index("foreign/image", "latest", &Index::new(images));
    let r = c.pull(&fake.reference("foreign/image", "latest")).await;
    assert_eq!(code(&r), Code::NotFound, "{r:?}");
    assert!(c.list().await.is_empty());
    assert!(c.snapshot_names().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_registry_is_unavailable() {
    let c = Corrald::start().await;
    let dead = tests::ClosedPort::new();
    let name = format!("127.0.0.1:{}/corral/busybox:latest", dead.port);
    let r = c.pull(&name).await;
    assert_eq!(code(&r), Code::Unavailable, "{r:?}");
    assert!(c.list().await.is_empty());
}

// ---- authentication ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_registry() {
    require_root!();
    let env = require_env!();
    let c = Corrald::start().await;
    let name = format!("{}/corral/busybox:latest", env.auth_registry);
    let want = env.info("corral/busybox:latest").config_digest;

    let r = c.pull(&name).await;
    assert_eq!(code(&r), Code::Unauthenticated, "{r:?}");
    let msg = r.unwrap_err().message().to_string();
    assert!(msg.contains(&env.auth_registry), "the error names the registry: {msg}");

    let wrong = cri::AuthConfig { username: env.auth_user.clone(), password: "wrong".into(), ..Default::default() };
    let r = c.pull_with_auth(&name, Some(wrong)).await;
    assert_eq!(code(&r), Code::Unauthenticated, "wrong password: {r:?}");
    assert!(c.list().await.is_empty());

    let good =
        cri::AuthConfig { username: env.auth_user.clone(), password: env.auth_pass.clone(), ..Default::default() };
    assert_eq!(c.pull_with_auth(&name, Some(good)).await.expect("pull with username/password"), want);
    c.remove(&name).await.expect("remove");
    assert!(c.snapshot_names().is_empty());

    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", env.auth_user, env.auth_pass));
    let auth = cri::AuthConfig { auth: b64, ..Default::default() };
    assert_eq!(c.pull_with_auth(&name, Some(auth)).await.expect("pull with auth"), want);
    assert!(c.status(&name).await.is_some());

    let bad = cri::AuthConfig { auth: "!!not base64!!".into(), ..Default::default() };
    let r = c.pull_with_auth(&name, Some(bad)).await;
    assert_eq!(code(&r), Code::InvalidArgument, "undecodable auth: {r:?}");
}

/// A fake registry behind a Bearer token flow, with one image.
async fn bearer_registry() -> (FakeRegistry, BearerAuth, Image) {
    let fake = FakeRegistry::start().await;
    let auth = BearerAuth {
        user: "tok-user".into(),
        pass: "tok-pass".into(),
        identity_token: "refresh-me".into(),
        token: "t0ken-abc".into(),
    };
    fake.require_bearer(auth.clone());
    let image = Image::new(vec![Layer::new(&[Entry::file("hello", "bearer\n")])]);
    fake.push("x", "latest", &image);
    (fake, auth, image)
}

/// Every registry request that got past the auth check carried the token.
fn assert_served_with_token(fake: &FakeRegistry, auth: &BearerAuth, image: &Image) {
    let blob = blob_path("x", &image.layers[0].digest());
    let with_token: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.path == blob && r.header("authorization") == Some(&format!("Bearer {}", auth.token)))
        .collect();
    assert_eq!(with_token.len(), 1, "the layer was fetched once with the token: {:?}", fake.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_with_username_password() {
    require_root!();
    let (fake, auth, image) = bearer_registry().await;
    let c = Corrald::start().await;
    let name = fake.reference("x", "latest");

    let r = c.pull(&name).await;
    assert_eq!(code(&r), Code::Unauthenticated, "{r:?}");
    assert!(r.unwrap_err().message().contains(&fake.host()), "the error names the registry");
    let wrong = cri::AuthConfig { username: auth.user.clone(), password: "nope".into(), ..Default::default() };
    assert_eq!(code(&c.pull_with_auth(&name, Some(wrong)).await), Code::Unauthenticated);

    let good = cri::AuthConfig { username: auth.user.clone(), password: auth.pass.clone(), ..Default::default() };
    assert_eq!(
        c.pull_with_auth(&name, Some(good)).await.expect("pull with a token from basic credentials"),
        image.id()
    );
    let token_gets: Vec<_> = fake.requests().into_iter().filter(|r| r.path == "/token" && r.method == "GET").collect();
    let ok = token_gets
        .iter()
        .find(|r| r.header("authorization").is_some_and(|h| h.starts_with("Basic ")))
        .expect("a token request with basic credentials");
    let q = ok.query_fields();
    assert_eq!(q.get("service").map(String::as_str), Some("fake"));
    assert_eq!(q.get("scope").map(String::as_str), Some("repository:x:pull"));
    assert_served_with_token(&fake, &auth, &image);
    let ov = Overlay::mount(&c.layer_dirs(&name).await);
    assert_eq!(read(ov.path().join("hello")), "bearer\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_registry_token_is_used_directly() {
    require_root!();
    let (fake, auth, image) = bearer_registry().await;
    let c = Corrald::start().await;
    let name = fake.reference("x", "latest");
    let creds = cri::AuthConfig { registry_token: auth.token.clone(), ..Default::default() };
    assert_eq!(c.pull_with_auth(&name, Some(creds)).await.expect("pull with a registry token"), image.id());
    assert_eq!(
        fake.count("GET", "/token") + fake.count("POST", "/token"),
        0,
        "a registry token needs no token endpoint"
    );
    assert!(fake
        .requests()
        .iter()
        .filter(|r| r.path.starts_with("/v2/x/"))
        .all(|r| r.header("authorization") == Some(&format!("Bearer {}", auth.token))));
    assert_served_with_token(&fake, &auth, &image);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_identity_token_is_a_refresh_token() {
    require_root!();
    let (fake, auth, image) = bearer_registry().await;
    let c = Corrald::start().await;
    let name = fake.reference("x", "latest");
    let bad = cri::AuthConfig { identity_token: "stale".into(), ..Default::default() };
    assert_eq!(code(&c.pull_with_auth(&name, Some(bad)).await), Code::Unauthenticated);
    let creds = cri::AuthConfig { identity_token: auth.identity_token.clone(), ..Default::default() };
    assert_eq!(c.pull_with_auth(&name, Some(creds)).await.expect("pull with an identity token"), image.id());
    let posts: Vec<_> = fake.requests().into_iter().filter(|r| r.path == "/token" && r.method == "POST").collect();
    let form = posts.last().expect("a POST to the token realm").form();
    assert_eq!(form.get("grant_type").map(String::as_str), Some("refresh_token"));
    assert_eq!(form.get("refresh_token"), Some(&auth.identity_token));
    assert_eq!(form.get("service").map(String::as_str), Some("fake"));
    assert!(form.contains_key("scope"));
    assert_served_with_token(&fake, &auth, &image);
}

// ---- mirrors ----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_io_through_mirrors_in_order() {
    require_root!();
    let env = require_env!();
    // The open registry must hold library/busybox, or corrald would go on to docker.io itself.
    let info = env.info("library/busybox:latest");
    // An empty fake registry first (404 for everything), a dead port next, then the real one.
    let empty = FakeRegistry::start().await;
    let dead = tests::ClosedPort::new();
    let config = format!(
        "[registry.mirrors.\"docker.io\"]\nendpoints = [\"http://{}\", \"http://127.0.0.1:{}\", \"http://{}\"]\n",
        empty.host(),
        dead.port,
        env.registry
    );
    let c = Corrald::with_config(&config).await;
    assert_eq!(c.pull("busybox").await.expect("pull busybox through the mirror"), info.config_digest);
    assert!(
        empty.count("GET", "/v2/library/busybox/manifests/latest") >= 1,
        "the first mirror was not tried first: {:?}",
        empty.requests()
    );
    let img = c.status("docker.io/library/busybox:latest").await.expect("ImageStatus docker.io/library/busybox:latest");
    assert_eq!(img.repo_tags, vec!["docker.io/library/busybox:latest".to_string()]);
    assert_eq!(img.repo_digests, vec![format!("docker.io/library/busybox@{}", info.manifest_digest)]);
    assert_eq!(c.status("busybox").await.map(|i| i.id), Some(info.config_digest.clone()));

    assert_eq!(c.pull("docker.io/library/busybox:latest").await.expect("pull the full name"), info.config_digest);
    assert_eq!(c.list().await.len(), 1);
    c.remove("busybox").await.expect("remove by the short name");
    assert!(c.list().await.is_empty());
}

// ---- faults from the fake registry ------------------------------------------------------------

/// A fake registry holding `good/base:latest` (one layer) and a corrald that pulled it.
async fn with_base_image() -> (FakeRegistry, Corrald, Layer) {
    let fake = FakeRegistry::start().await;
    let base = Layer::new(&[Entry::dir("etc"), Entry::file("etc/base", "base\n")]);
    fake.push("good/base", "latest", &Image::new(vec![base.clone()]));
    let c = Corrald::start().await;
    c.pull(&fake.reference("good/base", "latest")).await.expect("pull good/base");
    (fake, c, base)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_blob_is_data_loss() {
    require_root!();
    let (fake, c, base) = with_base_image().await;
    let before = c.snapshot_names();

    // a layer whose content does not match its digest (same size)
    let good = Layer::random("payload", 64 << 10, 1);
    let image = Image::new(vec![base.clone(), good.clone()]);
    fake.push("bad/layer", "latest", &image);
    let mut corrupt = good.blob.clone();
    corrupt[1000] ^= 0xff;
    fake.set_blob("bad/layer", &good.digest(), corrupt);
    let name = fake.reference("bad/layer", "latest");
    let r = c.pull(&name).await;
    assert_eq!(code(&r), Code::DataLoss, "{r:?}");
    assert!(r.unwrap_err().message().contains(&good.digest()), "the error names the blob");
    assert_failed_cleanly(&c, &name, &before, 1).await;

    // a config that does not match its digest
    let image2 = Image::new(vec![base.clone(), Layer::new(&[Entry::file("x", "x")])]);
    fake.push("bad/config", "latest", &image2);
    let mut cfg = image2.config.clone();
    let last = cfg.len() - 2;
    cfg[last] = b' ';
    fake.set_blob("bad/config", &image2.id(), cfg);
    let name2 = fake.reference("bad/config", "latest");
    let r = c.pull(&name2).await;
    assert_eq!(code(&r), Code::DataLoss, "{r:?}");
    assert_failed_cleanly(&c, &name2, &before, 1).await;

    // a layer whose uncompressed content does not match the config's diff id
    let other = Layer::new(&[Entry::file("y", "y")]);
    let mut liar = other.clone();
    liar.diff_id = Layer::new(&[Entry::file("z", "z")]).diff_id;
    let image3 = Image::new(vec![base.clone(), liar]);
    fake.push("bad/diffid", "latest", &image3);
    let name3 = fake.reference("bad/diffid", "latest");
    let r = c.pull(&name3).await;
    assert_eq!(code(&r), Code::DataLoss, "{r:?}");
    assert_failed_cleanly(&c, &name3, &before, 1).await;

    // the registry fixed: the same pulls succeed
    fake.push("bad/layer", "latest", &image);
    assert_eq!(c.pull(&name).await.expect("pull after the fix"), image.id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_layers_fail_cleanly() {
    require_root!();
    let (fake, c, base) = with_base_image().await;
    let before = c.snapshot_names();
    let full = Layer::random("big", 256 << 10, 2);

    // a truncated gzip stream that the manifest describes faithfully: a corrupt layer
    let mut cut = full.clone();
    cut.blob.truncate(full.blob.len() / 2);
    let image = Image::new(vec![base.clone(), cut]);
    fake.push("trunc/gzip", "latest", &image);
    let name = fake.reference("trunc/gzip", "latest");
    let r = c.pull(&name).await;
    assert_eq!(code(&r), Code::DataLoss, "truncated gzip: {r:?}");
    assert_failed_cleanly(&c, &name, &before, 1).await;

    // the registry serves half the blob as if it were all of it: a size mismatch
    let image = Image::new(vec![base.clone(), full.clone()]);
    fake.push("trunc/short", "latest", &image);
    fake.set_blob("trunc/short", &full.digest(), full.blob[..full.blob.len() / 2].to_vec());
    let name = fake.reference("trunc/short", "latest");
    let r = c.pull(&name).await;
    assert_eq!(code(&r), Code::DataLoss, "short blob: {r:?}");
    assert_failed_cleanly(&c, &name, &before, 1).await;

    // the connection closes half way through the announced body
    fake.push("trunc/cut", "latest", &image);
    fake.set_behavior(&blob_path("trunc/cut", &full.digest()), Behavior::CutAfter(full.blob.len() / 2));
    let name = fake.reference("trunc/cut", "latest");
    let r = c.pull(&name).await;
    assert!(r.is_err(), "a body cut short was accepted");
    assert_failed_cleanly(&c, &name, &before, 1).await;
    let got = code(&r);
    assert!(
        matches!(got, Code::DataLoss | Code::Unavailable),
        "a body cut short must be DataLoss or Unavailable, got {got:?}: {r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_pull_leaves_no_layers_of_its_own() {
    require_root!();
    let (fake, c, base) = with_base_image().await;
    let before = c.snapshot_names();
    // layer 1 is fine and unpacked before layer 2 turns out corrupt
    let fine = Layer::new(&[Entry::file("fine", "fine\n")]);
    let bad = Layer::random("bad", 32 << 10, 3);
    let image = Image::new(vec![base, fine.clone(), bad.clone()]);
    fake.push("half/good", "latest", &image);
    let mut corrupt = bad.blob.clone();
    corrupt[100] ^= 0x55;
    fake.set_blob("half/good", &bad.digest(), corrupt);
    let gate = Gate::new();
    fake.set_behavior(&blob_path("half/good", &bad.digest()), Behavior::WaitFor(gate.clone()));

    let name = fake.reference("half/good", "latest");
    let used = |u: &cri::FilesystemUsage| u.used_bytes.as_ref().map(|b| b.value).unwrap_or(0);
    let used_before = used(&c.fs_info().await);
    let pull = {
        let mut images = c.images();
        let name = name.clone();
        tokio::spawn(async move {
            rpc(images.pull_image(cri::PullImageRequest { image: Some(tests::spec(&name)), ..Default::default() }))
                .await
        })
    };
    let unpacked = wait_for(Duration::from_secs(30), || {
        c.snapshot_names().difference(&before).any(|n| c.root.join("snapshots").join(n).join("fs/fine").exists())
    })
    .await;
    assert!(unpacked, "the good layer was never unpacked");
    // ImageFsInfo counts recorded layers: wait until the good one is recorded too
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while used(&c.fs_info().await) <= used_before {
        assert!(std::time::Instant::now() < deadline, "the good layer was never recorded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gate.open();
    let r = pull.await.expect("pull task");
    assert_eq!(code(&r), Code::DataLoss, "{r:?}");
    assert_failed_cleanly(&c, &name, &before, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_pull_stops_its_other_downloads_cleanly() {
    require_root!();
    let (fake, c, base) = with_base_image().await;
    let before = c.snapshot_names();
    // layer 1 is still downloading (stalled half way) when layer 2 fails its digest check
    let slow = Layer::random("slow", 128 << 10, 4);
    let bad = Layer::random("bad", 16 << 10, 5);
    let image = Image::new(vec![base, slow.clone(), bad.clone()]);
    fake.push("stall/fail", "latest", &image);
    let stall = Gate::new();
    fake.set_behavior(
        &blob_path("stall/fail", &slow.digest()),
        Behavior::StallAfter { bytes: slow.blob.len() / 2, gate: stall.clone() },
    );
    let release_bad = Gate::new();
    let mut corrupt = bad.blob.clone();
    corrupt[10] ^= 1;
    fake.set_route(
        &blob_path("stall/fail", &bad.digest()),
        Route::ok("application/octet-stream", corrupt).behave(Behavior::WaitFor(release_bad.clone())),
    );

    let name = fake.reference("stall/fail", "latest");
    let pull = {
        let mut images = c.images();
        let name = name.clone();
        tokio::spawn(async move {
            rpc(images.pull_image(cri::PullImageRequest { image: Some(tests::spec(&name)), ..Default::default() }))
                .await
        })
    };
    let slow_path = blob_path("stall/fail", &slow.digest());
    let bad_path = blob_path("stall/fail", &bad.digest());
    let started = wait_for(Duration::from_secs(30), || {
        fake.count("GET", &slow_path) >= 1 && fake.count("GET", &bad_path) >= 1 && !c.tmp_names().is_empty()
    })
    .await;
    assert!(
        started,
        "both layer downloads did not start: {:?}, tmp {:?}",
        fake.requests().iter().map(|r| &r.path).collect::<Vec<_>>(),
        c.tmp_names()
    );
    release_bad.open();
    let r = pull.await.expect("pull task");
    assert_eq!(code(&r), Code::DataLoss, "{r:?}");
    // the stalled download ends now (the registry closes it half way), whether corrald
    // abandoned it or let it run: either way nothing of it may stay
    stall.open();
    assert_failed_cleanly(&c, &name, &before, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_layers_write_nothing_outside() {
    require_root!();
    let fake = FakeRegistry::start().await;
    let c = Corrald::start().await;
    // <dir>/root/snapshots/<n>/fs: four levels up from a layer dir is <dir>
    let dir = c.dir().to_path_buf();
    let d = dir.display().to_string();
    let secret = dir.join("secret");
    std::fs::write(&secret, "secret\n").unwrap();
    let host_sentinel = PathBuf::from(format!("{d}-escaped"));
    let outside_before = tests::dir_names(&dir);
    let host_rel = host_sentinel.strip_prefix("/").unwrap().display().to_string();
    let meta = |p: &Path| {
        let m = std::fs::symlink_metadata(p).unwrap();
        (m.mode(), m.uid(), m.gid(), m.mtime(), m.nlink(), m.len())
    };
    let secret_meta = meta(&secret);
    let dir_meta = meta(&dir);

    let cases: Vec<(&str, Vec<Entry>, bool)> = vec![
        // (name, entries, must the pull fail?)
        ("dotdot", vec![Entry::file("../../../../escaped-dotdot", "x")], true),
        ("dotdot-deep", vec![Entry::dir("a"), Entry::file("a/../../../../../escaped-deep", "x")], true),
        ("dotdot-dir", vec![Entry::dir("../../../../escaped-dir")], true),
        ("dotdot-symlink-name", vec![Entry::symlink("../../../../escaped-link", "/etc/passwd")], true),
        ("hardlink-dotdot", vec![Entry::hardlink("h", "../../../../secret"), Entry::file("h", "pwned\n")], true),
        ("hardlink-absolute", vec![Entry::hardlink("h", &format!("{d}/secret")), Entry::file("h", "pwned\n")], false),
        (
            "hardlink-via-symlink",
            vec![Entry::symlink("s", &d), Entry::hardlink("h", "s/secret"), Entry::file("h", "pwned\n")],
            false,
        ),
        (
            "symlink-absolute",
            vec![Entry::symlink("abs", &d), Entry::file("abs/escaped-abs", "x"), Entry::dir("abs/escaped-absdir")],
            false,
        ),
        ("symlink-relative", vec![Entry::symlink("rel", "../../../.."), Entry::file("rel/escaped-rel", "x")], false),
        ("symlink-root", vec![Entry::symlink("r", "/"), Entry::file(&format!("r/{host_rel}"), "x")], false),
        (
            "symlink-chain",
            vec![
                Entry::symlink("a", "b/../.."),
                Entry::dir("b"),
                Entry::symlink("b/c", "../../../.."),
                Entry::file("a/escaped-chain", "x"),
                Entry::file("b/c/escaped-chain2", "x"),
            ],
            false,
        ),
        (
            "symlink-then-file",
            vec![Entry::symlink("victim", &format!("{d}/secret")), Entry::file("victim", "pwned\n")],
            false,
        ),
        (
            "hardlink-to-symlink",
            vec![Entry::symlink("s", &format!("{d}/secret")), Entry::hardlink("h", "s"), Entry::file("h", "pwned\n")],
            false,
        ),
        (
            "dir-over-symlink",
            vec![Entry::symlink("dd", &d), Entry::dir("dd"), Entry::file("dd/escaped-dd", "x")],
            false,
        ),
        (
            "whiteout-via-symlink",
            vec![Entry::symlink("w", &d), Entry::file("w/.wh.secret", ""), Entry::file("w/.wh..wh..opq", "")],
            false,
        ),
        ("whiteout-dotdot", vec![Entry::file("../../../../.wh.secret", "")], true),
        (
            "absolute-names",
            vec![Entry::dir(&format!("{d}/")), Entry::file(&format!("{d}/escaped-absname"), "x")],
            false,
        ),
    ];
    for (n, (case, entries, must_fail)) in cases.into_iter().enumerate() {
        let before = c.snapshot_names();
        let images_before = c.list().await.len();
        let image = Image::new(vec![Layer::new(&entries)]);
        let repo = format!("hostile/{case}");
        fake.push(&repo, "latest", &image);
        let name = fake.reference(&repo, "latest");
        let r = c.pull(&name).await;
        if must_fail {
            assert!(r.is_err(), "case {case}: a layer escaping with '..' was accepted");
            assert_failed_cleanly(&c, &name, &before, images_before).await;
        } else if r.is_err() {
            assert_failed_cleanly(&c, &name, &before, images_before).await;
        }
        eprintln!("hostile case {n} {case}: {:?}", r.as_ref().map_err(|e| (e.code(), e.message().to_string())));
        assert_eq!(tests::dir_names(&dir), outside_before, "case {case} wrote into {}", dir.display());
        assert_eq!(read(&secret), "secret\n", "case {case} changed a file outside the root");
        assert_eq!(std::fs::metadata(&secret).unwrap().nlink(), 1, "case {case} hardlinked a file outside the root");
        assert_eq!(meta(&secret), secret_meta, "case {case} changed the metadata of a file outside the root");
        assert_eq!(meta(&dir).0, dir_meta.0, "case {case} changed the mode of a directory outside the root");
        assert!(std::fs::symlink_metadata(&host_sentinel).is_err(), "case {case} wrote {}", host_sentinel.display());
        for escaped in [
            "escaped-dotdot",
            "escaped-deep",
            "escaped-dir",
            "escaped-link",
            "escaped-abs",
            "escaped-absdir",
            "escaped-rel",
            "escaped-chain",
            "escaped-chain2",
            "escaped-dd",
            "escaped-absname",
        ] {
            for up in [dir.parent().unwrap(), &dir, &c.root, &c.root.join("snapshots")] {
                assert!(
                    std::fs::symlink_metadata(up.join(escaped)).is_err(),
                    "case {case} wrote {}",
                    up.join(escaped).display()
                );
            }
        }
    }
    // what was contained landed inside its layer
    let (_, v) = c
        .status_verbose(&fake.reference("hostile/symlink-absolute", "latest"))
        .await
        .expect("symlink-absolute was pulled");
    let fs = &snapshots_of(&v)[0];
    assert!(
        fs.join(format!("{}/escaped-abs", d.trim_start_matches('/'))).is_file(),
        "the write through the symlink stays inside the layer"
    );
    let _ = std::fs::remove_file(&host_sentinel);
}

// ---- concurrency ------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_fetch_each_layer_once() {
    require_root!();
    let fake = FakeRegistry::start().await;
    let c = Corrald::start().await;
    let base = Layer::random("base", 200 << 10, 10);
    let layers: Vec<Layer> =
        std::iter::once(base.clone()).chain((11..15).map(|n| Layer::random(&format!("l{n}"), 200 << 10, n))).collect();
    let image = Image::new(layers.clone());
    fake.push("multi/layer", "latest", &image);
    // a second image sharing the bottom layer, pulled at the same time
    let sibling = Image::new(vec![base.clone(), Layer::random("sib", 100 << 10, 20)]);
    fake.push("multi/sibling", "latest", &sibling);
    // hold the layers until the first manifest was asked for, so the pulls overlap
    let gate = Gate::new();
    for l in &image.layers {
        fake.set_behavior(&blob_path("multi/layer", &l.digest()), Behavior::WaitFor(gate.clone()));
    }
    for l in &sibling.layers {
        fake.set_behavior(&blob_path("multi/sibling", &l.digest()), Behavior::WaitFor(gate.clone()));
    }

    let name = fake.reference("multi/layer", "latest");
    let sib = fake.reference("multi/sibling", "latest");
    let mut tasks = Vec::new();
    for i in 0..10 {
        let mut images = c.images();
        let n = if i < 8 { name.clone() } else { sib.clone() };
        tasks.push(tokio::spawn(async move {
            rpc(images.pull_image(cri::PullImageRequest { image: Some(tests::spec(&n)), ..Default::default() }))
                .await
                .map(|r| r.into_inner().image_ref)
        }));
    }
    let asked = wait_for(Duration::from_secs(30), || fake.requests().iter().any(|r| r.path.contains("/blobs/"))).await;
    assert!(asked, "no blob requested");
    // let the other requests arrive (not a timing assertion: the counts below hold either way)
    tokio::time::sleep(Duration::from_millis(500)).await;
    gate.open();
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.expect("task").expect("concurrent pull"));
    }
    assert!(ids[..8].iter().all(|id| *id == image.id()), "ids {ids:?}");
    assert!(ids[8..].iter().all(|id| *id == sibling.id()), "ids {ids:?}");
    let base_fetches = fake.count("GET", &blob_path("multi/layer", &base.digest()))
        + fake.count("GET", &blob_path("multi/sibling", &base.digest()));
    assert_eq!(base_fetches, 1, "the shared layer was fetched {base_fetches} times");
    for l in &image.layers[1..] {
        assert_eq!(
            fake.count("GET", &blob_path("multi/layer", &l.digest())),
            1,
            "layer {} fetched more than once",
            l.digest()
        );
    }
    assert_eq!(fake.count("GET", &blob_path("multi/sibling", &sibling.layers[1].digest())), 1);
    assert_eq!(c.list().await.len(), 2);
    assert_eq!(c.snapshot_names().len(), 6, "5 + 1 distinct layers");
    assert!(c.tmp_names().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_from_the_registry() {
    require_root!();
    let env = require_env!();
    let c = Corrald::start().await;
    let name = env.image("corral/multilayer:latest");
    let want = env.info("corral/multilayer:latest").config_digest;
    let pulls = (0..8).map(|_| {
        let mut images = c.images();
        let name = name.clone();
        async move {
            rpc(images.pull_image(cri::PullImageRequest { image: Some(tests::spec(&name)), ..Default::default() }))
                .await
        }
    });
    for r in futures::future::join_all(pulls).await {
        assert_eq!(r.expect("concurrent pull").into_inner().image_ref, want);
    }
    assert_eq!(c.list().await.len(), 1);
    assert_eq!(c.snapshot_names().len(), 5);
    assert!(c.tmp_names().is_empty());
}

// ---- restarts, crashes, the lock, the socket --------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_survive_a_restart() {
    require_root!();
    let fake = FakeRegistry::start().await;
    let image = Image::new(vec![Layer::random("a", 64 << 10, 30), Layer::new(&[Entry::file("b", "b\n")])]);
    fake.push("keep/me", "latest", &image);
    let name = fake.reference("keep/me", "latest");
    let mut c = Corrald::start().await;
    assert_eq!(c.pull(&name).await.expect("pull"), image.id());
    let layers = c.layer_dirs(&name).await;

    let status = c.stop().await;
    assert!(status.success(), "corrald exited with {status} after SIGTERM");
    assert!(!c.socket.exists(), "the socket outlived a clean shutdown");

    c.restart().await;
    let listed = c.list().await;
    assert_eq!(listed.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(), vec![image.id().as_str()]);
    assert_eq!(c.layer_dirs(&name).await, layers, "the same layers after the restart");
    assert_eq!(read(layers[0].join("b")), "b\n");
    let fetches = |fake: &FakeRegistry| {
        image.layers.iter().map(|l| fake.count("GET", &blob_path("keep/me", &l.digest()))).sum::<usize>()
    };
    assert_eq!(fetches(&fake), 2);
    assert_eq!(c.pull(&name).await.expect("pull again"), image.id());
    assert_eq!(fetches(&fake), 2, "pulling again after a restart fetched layers again");
    assert_eq!(c.snapshot_names().len(), 2);
    c.remove(&name).await.expect("remove after restart");
    assert!(c.snapshot_names().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_images_survive_a_restart() {
    require_root!();
    let env = require_env!();
    let mut c = Corrald::start().await;
    let name = env.image("corral/layered:latest");
    let id = c.pull(&name).await.expect("pull");
    let before = c.layer_dirs(&name).await;
    c.restart().await;
    assert_eq!(c.status(&name).await.map(|i| i.id), Some(id.clone()));
    assert_eq!(c.layer_dirs(&name).await, before);
    let start = std::time::Instant::now();
    assert_eq!(c.pull(&name).await.expect("pull again"), id);
    eprintln!("second pull after restart took {:?}", start.elapsed());
    assert_eq!(c.snapshot_names().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_mid_pull_leaves_nothing_after_restart() {
    require_root!();
    let fake = FakeRegistry::start().await;
    let small = Layer::new(&[Entry::file("small", "s\n")]);
    let big = Layer::random("big", 512 << 10, 40);
    let image = Image::new(vec![small.clone(), big.clone()]);
    fake.push("crash/me", "latest", &image);
    let gate = Gate::new();
    let big_path = blob_path("crash/me", &big.digest());
    fake.set_behavior(&big_path, Behavior::StallAfter { bytes: big.blob.len() / 3, gate: gate.clone() });
    let name = fake.reference("crash/me", "latest");

    let mut c = Corrald::start().await;
    let pull = {
        let mut images = c.images();
        let name = name.clone();
        tokio::spawn(async move {
            rpc(images.pull_image(cri::PullImageRequest { image: Some(tests::spec(&name)), ..Default::default() }))
                .await
        })
    };
    let mid =
        wait_for(Duration::from_secs(30), || fake.count("GET", &big_path) >= 1 && !c.tmp_names().is_empty()).await;
    assert!(mid, "the pull never got to the stalled layer");
    // the small layer is usually unpacked by now; crash either way
    wait_for(Duration::from_secs(5), || !c.snapshot_names().is_empty()).await;
    c.kill9();
    let r = pull.await.expect("pull task");
    assert!(r.is_err(), "a pull survived kill -9: {r:?}");
    assert!(c.socket.exists(), "kill -9 leaves the socket behind");

    c.restart().await;
    assert!(c.list().await.is_empty(), "an interrupted pull left an image");
    assert!(c.tmp_names().is_empty(), "temp files survived the restart: {:?}", c.tmp_names());
    assert!(c.snapshot_names().is_empty(), "snapshot dirs survived the restart: {:?}", c.snapshot_names());
    assert!(c.blob_names().is_empty(), "blobs survived the restart: {:?}", c.blob_names());

    gate.open();
    fake.set_behavior(&big_path, Behavior::Normal);
    assert_eq!(c.pull(&name).await.expect("pull after the crash"), image.id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_socket_is_replaced() {
    let mut c = Corrald::start().await;
    c.kill9();
    assert!(std::fs::symlink_metadata(&c.socket).expect("socket after kill -9").file_type().is_socket());
    c.restart().await;
    rpc(c.runtime().version(cri::VersionRequest::default())).await.expect("Version after replacing the stale socket");
    let status = c.stop().await;
    assert!(status.success(), "exit status {status}");
    assert!(!c.socket.exists(), "SIGTERM leaves no socket");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_corrald_on_the_same_root_refuses() {
    let c = Corrald::start().await;
    let other = tempfile::Builder::new().prefix("corral-it-2.").tempdir().unwrap();
    for (what, socket) in [("its own socket", other.path().join("other.sock")), ("the same socket", c.socket.clone())] {
        let run = tokio::process::Command::new(tests::corrald_binary())
            .arg("--root")
            .arg(&c.root)
            .arg("--state")
            .arg(other.path().join("state"))
            .arg("--listen")
            .arg(&socket)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .unwrap_or_else(|_| panic!("a second corrald with {what} kept running"))
            .expect("running corrald");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(!out.status.success(), "a second corrald on the same root with {what} exited 0: {text}");
        let lower = text.to_lowercase();
        assert!(
            lower.contains("lock") || lower.contains("already running"),
            "the refusal does not mention the lock: {text}"
        );
        assert!(
            lower.contains(&c.root.display().to_string().to_lowercase()),
            "the refusal does not name the root: {text}"
        );
        // the first one is untouched
        rpc(c.runtime().version(cri::VersionRequest::default())).await.expect("the first corrald still answers");
        assert!(c.socket.exists());
    }
    assert!(!other.path().join("other.sock").exists(), "the refused corrald created its socket");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_stalled_pull_exits_promptly() {
    require_root!();
    let fake = FakeRegistry::start().await;
    let big = Layer::random("big", 256 << 10, 50);
    let image = Image::new(vec![big.clone()]);
    fake.push("slow/pull", "latest", &image);
    let gate = Gate::new();
    let big_path = blob_path("slow/pull", &big.digest());
    fake.set_behavior(&big_path, Behavior::StallAfter { bytes: 1000, gate: gate.clone() });
    let name = fake.reference("slow/pull", "latest");

    let mut c = Corrald::start().await;
    let pull = {
        let mut images = c.images();
        let name = name.clone();
        tokio::spawn(async move {
            rpc(images.pull_image(cri::PullImageRequest { image: Some(tests::spec(&name)), ..Default::default() }))
                .await
        })
    };
    assert!(
        wait_for(Duration::from_secs(30), || fake.count("GET", &big_path) >= 1).await,
        "the pull never reached the layer"
    );
    c.signal(libc::SIGTERM);
    let exited = c.wait_exit(Duration::from_secs(15)).await;
    gate.open();
    let status = match exited {
        Some(status) => status,
        None => {
            // let it finish (the stalled download fails once released) for the checks below
            let late = c.wait_exit(Duration::from_secs(60)).await;
            panic!("corrald did not exit within 15 s of SIGTERM while a pull was stalled (it exited {late:?} after the registry let go)");
        }
    };
    assert!(status.success(), "exit status {status}");
    let _ = pull.await;
    assert!(!c.socket.exists(), "SIGTERM leaves no socket");
    c.restart().await;
    assert!(c.list().await.is_empty());
    assert!(c.tmp_names().is_empty(), "{:?}", c.tmp_names());
    assert!(c.snapshot_names().is_empty(), "{:?}", c.snapshot_names());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_tag_follows_the_registry() {
    require_root!();
    let fake = FakeRegistry::start().await;
    let v1 = Image::new(vec![Layer::new(&[Entry::file("version", "1\n")])]);
    let v2 = Image::new(vec![Layer::new(&[Entry::file("version", "2\n")])]);
    fake.push("moving/tag", "latest", &v1);
    let name = fake.reference("moving/tag", "latest");
    let c = Corrald::start().await;
    assert_eq!(c.pull(&name).await.expect("pull v1"), v1.id());
    fake.push("moving/tag", "latest", &v2);
    assert_eq!(c.pull(&name).await.expect("pull v2"), v2.id());
    assert_eq!(c.status(&name).await.map(|i| i.id), Some(v2.id()), "the tag names the newest pull");
    let old = c.status(&v1.id()).await.expect("v1 is still there by id");
    assert!(old.repo_tags.is_empty(), "v1 kept the tag that moved: {:?}", old.repo_tags);
    assert_eq!(old.repo_digests, vec![format!("{}/moving/tag@{}", fake.host(), v1.digest())]);
    assert_eq!(c.list().await.len(), 2);
    let ov = Overlay::mount(&c.layer_dirs(&name).await);
    assert_eq!(read(ov.path().join("version")), "2\n");
    drop(ov);
    c.remove(&v1.id()).await.expect("remove v1");
    assert_eq!(c.snapshot_names().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_blob_or_a_lying_manifest_fails_cleanly() {
    require_root!();
    let (fake, c, base) = with_base_image().await;
    let before = c.snapshot_names();
    // the manifest names a layer the registry does not have
    let missing = Layer::new(&[Entry::file("missing", "m")]);
    let image = Image::new(vec![base.clone(), missing.clone()]);
    fake.push("no/blob", "latest", &image);
    fake.remove_route(&blob_path("no/blob", &missing.digest()));
    let name = fake.reference("no/blob", "latest");
    let r = c.pull(&name).await;
    assert_eq!(code(&r), Code::NotFound, "{r:?}");
    assert_failed_cleanly(&c, &name, &before, 1).await;

    // asked by digest, the registry answers with another manifest
    let other = Image::new(vec![base.clone(), Layer::new(&[Entry::file("other", "o")])]);
    fake.push("lying/manifest", "latest", &other);
    let wanted = format!("sha256:{}", "ab".repeat(32));
    fake.set_route(&manifest_path("lying/manifest", &wanted), Route::ok(oci::OCI_MANIFEST, other.manifest.clone()));
    let name = format!("{}/lying/manifest@{wanted}", fake.host());
    let r = c.pull(&name).await;
    assert_eq!(code(&r), Code::DataLoss, "{r:?}");
    assert_failed_cleanly(&c, &name, &before, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configs_are_refused_at_start() {
    let dir = tempfile::Builder::new().prefix("corral-it-cfg.").tempdir().unwrap();
    let cases = [
        ("unknown key", "lisen = \"/x\"\n", "lisen"),
        ("mirror without scheme", "[registry.mirrors.\"docker.io\"]\nendpoints = [\"127.0.0.1:5000\"]\n", "http"),
        ("missing file", "", "reading config file"),
    ];
    for (i, (what, text, needle)) in cases.iter().enumerate() {
        let cfg = dir.path().join(format!("config{i}.toml"));
        if *what != "missing file" {
            std::fs::write(&cfg, text).unwrap();
        }
        let run = tokio::process::Command::new(tests::corrald_binary())
            .arg("--config")
            .arg(&cfg)
            .arg("--root")
            .arg(dir.path().join("root"))
            .arg("--state")
            .arg(dir.path().join("state"))
            .arg("--listen")
            .arg(dir.path().join("sock"))
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .unwrap_or_else(|_| panic!("corrald with a bad config ({what}) kept running"))
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "corrald started with a bad config ({what})");
        assert!(text.contains(needle), "the error for {what} does not mention {needle:?}: {text}");
        assert!(!dir.path().join("sock").exists());
    }
}
