//! The project's own scripts, run on temporary directories.

use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is inside the workspace").to_path_buf()
}

/// Runs hack/install-cni.sh with a stand-in plugin binary; returns the conf dir's names after.
fn install_cni(existing: &[&str]) -> Vec<String> {
    let dir = tempfile::Builder::new().prefix("corral-it-install-cni.").tempdir().expect("temp dir");
    let plugin = dir.path().join("corral-cni");
    std::fs::write(&plugin, "#!/bin/sh\n").unwrap();
    let (bin, conf) = (dir.path().join("bin"), dir.path().join("net.d"));
    std::fs::create_dir(&conf).unwrap();
    for name in existing {
        std::fs::write(conf.join(name), "{}").unwrap();
    }
    let out = Command::new(workspace().join("hack/install-cni.sh"))
        .arg(&plugin)
        .arg(&bin)
        .arg(&conf)
        .output()
        .expect("running hack/install-cni.sh");
    assert!(out.status.success(), "install-cni.sh with {existing:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(bin.join("corral-cni").exists(), "corral-cni was not installed");
    let mut names: Vec<String> = tests::dir_names(&conf).into_iter().collect();
    names.sort();
    names
}

#[test]
fn install_cni_writes_the_default_network_only_when_the_node_has_none() {
    assert_eq!(install_cni(&[]), ["10-corral.conflist"]);
    // Any one kind of config is the node's network (an `ls` of the three globs failed when one
    // kind was missing, and the default was written beside a lone .conflist).
    assert_eq!(install_cni(&["05-node.conflist"]), ["05-node.conflist"]);
    assert_eq!(install_cni(&["05-node.conf"]), ["05-node.conf"]);
    assert_eq!(install_cni(&["05-node.json"]), ["05-node.json"]);
    assert_eq!(install_cni(&["a.conflist", "b.conf", "c.json"]), ["a.conflist", "b.conf", "c.json"]);
    // Other files are not configs.
    assert_eq!(install_cni(&["README"]), ["10-corral.conflist", "README"]);
}

#[test]
fn install_cni_written_default_is_valid_json() {
    let dir = tempfile::Builder::new().prefix("corral-it-install-cni.").tempdir().expect("temp dir");
    let plugin = dir.path().join("corral-cni");
    std::fs::write(&plugin, "#!/bin/sh\n").unwrap();
    let conf = dir.path().join("net.d");
    let out = Command::new(workspace().join("hack/install-cni.sh"))
        .arg(&plugin)
        .arg(dir.path().join("bin"))
        .arg(&conf)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = std::fs::read_to_string(conf.join("10-corral.conflist")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).expect("the default network is JSON");
    assert_eq!(v["plugins"][0]["type"], "corral-cni");
    assert_eq!(v["plugins"][0]["capabilities"]["portMappings"], true);
}
