//! The CNI client, with libcni's semantics: the first config of the conf dir, plugin chaining
//! with prevResult, capability args, the spec's environment, and every attachment's config and
//! result cached so DEL uses what ADD used even after the conf dir changed or corrald crashed.

pub mod config;
pub mod exec;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tracing::{debug, info, warn};

use self::config::{ConfigError, NetworkList};
use self::exec::{ExecError, Invocation};

#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// network configuration
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// plugin failure
    #[error(transparent)]
    Exec(#[from] ExecError),
    /// {what}: {source}
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
}

/// A hostPort mapping (CRI PortMapping), in the portMappings capability's shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    pub host_port: i32,
    pub container_port: i32,
    pub protocol: String,
    #[serde(default, rename = "hostIP")]
    pub host_ip: String,
}

/// One pod's interface on the network.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub pod_id: String,
    pub netns: PathBuf,
    pub ifname: String,
    pub pod_name: String,
    pub pod_namespace: String,
    pub pod_uid: String,
    pub port_mappings: Vec<PortMapping>,
}

impl Attachment {
    /// CNI_ARGS. Values go through `arg_value`, so no name can break its `K=V;K=V` syntax or the
    /// environment variable it travels in.
    fn cni_args(&self) -> String {
        format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
            arg_value(&self.pod_namespace),
            arg_value(&self.pod_name),
            arg_value(&self.pod_id),
            arg_value(&self.pod_uid)
        )
    }

    fn runtime_config(&self) -> Map<String, Value> {
        let mut rc = Map::new();
        if !self.port_mappings.is_empty() {
            rc.insert("portMappings".into(), json!(self.port_mappings));
        }
        rc
    }
}

/// A CNI_ARGS value: bytes other than letters, digits and `-._~:@/+` percent-encoded. Kubernetes
/// names and uids pass unchanged; a `;`, `=`, NUL or newline cannot reach the plugin raw.
pub fn arg_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:@/+".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// What is cached per attachment (libcni's cache file, in spirit).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Cached {
    container_id: String,
    if_name: String,
    network_name: String,
    config: Value,
    #[serde(default)]
    runtime_config: Map<String, Value>,
    #[serde(default)]
    result: Value,
}

pub struct Cni {
    conf_dir: PathBuf,
    bin_dirs: Vec<PathBuf>,
    cache_dir: PathBuf,
    /// ADD and DEL hold it shared, GC exclusively: GC's list of valid attachments must not miss
    /// one that an ADD is making.
    gc_lock: tokio::sync::RwLock<()>,
}

impl Cni {
    pub fn new(conf_dir: PathBuf, bin_dirs: Vec<PathBuf>, cache_dir: PathBuf) -> Cni {
        Cni { conf_dir, bin_dirs, cache_dir, gc_lock: tokio::sync::RwLock::new(()) }
    }

    /// Ok(network name) when a config with every plugin binary present is there, else the reason.
    pub fn status(&self) -> Result<String, String> {
        let list = config::load(&self.conf_dir).map_err(|e| e.to_string())?;
        for p in &list.plugins {
            let kind = NetworkList::plugin_type(p);
            if !exec::exists_any(kind, &self.bin_dirs) {
                return Err(format!("network {}: plugin {kind:?} not found in {}", list.name, self.bin_dirs_text()));
            }
        }
        Ok(list.name)
    }

    fn bin_dirs_text(&self) -> String {
        self.bin_dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(":")
    }

    fn cache_path(&self, network: &str, a: &Attachment) -> PathBuf {
        self.cache_dir.join(format!("{network}-{}-{}.json", a.pod_id, a.ifname))
    }

    fn find_cache(&self, a: &Attachment) -> Option<(PathBuf, Cached)> {
        let suffix = format!("-{}-{}.json", a.pod_id, a.ifname);
        let rd = std::fs::read_dir(&self.cache_dir).ok()?;
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.ends_with(&suffix) {
                let text = std::fs::read(e.path()).ok()?;
                if let Ok(c) = serde_json::from_slice::<Cached>(&text) {
                    return Some((e.path(), c));
                }
            }
        }
        None
    }

    fn write_cache(&self, path: &Path, cached: &Cached) -> Result<(), CniError> {
        let io = |source| CniError::Io { what: format!("writing CNI cache {}", path.display()), source };
        std::fs::create_dir_all(&self.cache_dir).map_err(io)?;
        let tmp = path.with_extension("tmp");
        let bytes = serde_json::to_vec(cached)
            .map_err(|e| CniError::Io { what: "encoding CNI cache".into(), source: std::io::Error::other(e) })?;
        std::fs::write(&tmp, bytes).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    fn plugin_conf(
        list: &NetworkList,
        plugin: &Map<String, Value>,
        prev: Option<&Value>,
        runtime_config: &Map<String, Value>,
    ) -> Value {
        let mut conf = plugin.clone();
        conf.insert("name".into(), json!(list.name));
        conf.insert("cniVersion".into(), json!(list.cni_version));
        if let Some(p) = prev.filter(|p| !p.is_null()) {
            conf.insert("prevResult".into(), p.clone());
        }
        let rc: Map<String, Value> = runtime_config
            .iter()
            .filter(|(cap, _)| NetworkList::has_capability(plugin, cap))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !rc.is_empty() {
            conf.insert("runtimeConfig".into(), Value::Object(rc));
        }
        Value::Object(conf)
    }

    /// ADD on every plugin of the current config, in order. On failure the attachment is deleted
    /// again (DEL on every plugin) before the error is returned. Returns the pod's IPs.
    pub async fn add(&self, a: &Attachment) -> Result<Vec<String>, CniError> {
        let _gc = self.gc_lock.read().await;
        let list = config::load(&self.conf_dir)?;
        let runtime_config = a.runtime_config();
        let cache_path = self.cache_path(&list.name, a);
        // Cached before ADD: a crash during ADD still leaves what DEL needs.
        let mut cached = Cached {
            container_id: a.pod_id.clone(),
            if_name: a.ifname.clone(),
            network_name: list.name.clone(),
            config: list.raw.clone(),
            runtime_config: runtime_config.clone(),
            result: Value::Null,
        };
        self.write_cache(&cache_path, &cached)?;
        let args = a.cni_args();
        let netns = a.netns.display().to_string();
        let inv = Invocation {
            command: "ADD",
            container_id: &a.pod_id,
            netns: &netns,
            ifname: &a.ifname,
            args: &args,
            bin_dirs: &self.bin_dirs,
        };
        let mut prev: Option<Value> = None;
        for plugin in &list.plugins {
            let conf = Self::plugin_conf(&list, plugin, prev.as_ref(), &runtime_config);
            match exec::run(NetworkList::plugin_type(plugin), &conf, &inv).await {
                Ok(result) => prev = Some(result),
                Err(e) => {
                    warn!(pod = %a.pod_id, error = %e, "CNI ADD failed, deleting the attachment");
                    if let Err(del) = self.del_locked(a).await {
                        warn!(pod = %a.pod_id, error = %del, "CNI DEL after a failed ADD");
                    }
                    return Err(e.into());
                }
            }
        }
        let result = prev.unwrap_or(Value::Null);
        let ips = result_ips(&result);
        cached.result = result;
        self.write_cache(&cache_path, &cached)?;
        info!(pod = %a.pod_id, network = %list.name, ips = ?ips, "pod network attached");
        Ok(ips)
    }

    /// DEL on every plugin in reverse order, with the config ADD used (cached), else the current
    /// one. Succeeds when there is nothing to delete; the netns may be gone.
    pub async fn del(&self, a: &Attachment) -> Result<(), CniError> {
        let _gc = self.gc_lock.read().await;
        self.del_locked(a).await
    }

    async fn del_locked(&self, a: &Attachment) -> Result<(), CniError> {
        let (cache_path, list, runtime_config, prev) = match self.find_cache(a) {
            Some((path, c)) => {
                let list = NetworkList::from_raw(&path, c.config)?;
                (Some(path), list, c.runtime_config, c.result)
            }
            None => match config::load(&self.conf_dir) {
                Ok(list) => (None, list, a.runtime_config(), Value::Null),
                Err(e) => {
                    debug!(pod = %a.pod_id, error = %e, "no cached or current network config: nothing to delete");
                    return Ok(());
                }
            },
        };
        let args = a.cni_args();
        // A netns that is gone (unpinned, or /run cleared by a reboot) is passed as empty, as
        // the spec allows for DEL.
        let netns = if crate::sys::is_nsfs(&a.netns) { a.netns.display().to_string() } else { String::new() };
        let inv = Invocation {
            command: "DEL",
            container_id: &a.pod_id,
            netns: &netns,
            ifname: &a.ifname,
            args: &args,
            bin_dirs: &self.bin_dirs,
        };
        for plugin in list.plugins.iter().rev() {
            let conf = Self::plugin_conf(&list, plugin, Some(&prev), &runtime_config);
            exec::run(NetworkList::plugin_type(plugin), &conf, &inv).await?;
        }
        if let Some(path) = cache_path {
            if let Err(e) = std::fs::remove_file(&path) {
                warn!(path = %path.display(), error = %e, "removing CNI cache");
            }
        }
        debug!(pod = %a.pod_id, network = %list.name, "pod network detached");
        Ok(())
    }

    /// Deletes cached attachments of pods not in `valid()` (left by a crash), then runs the GC
    /// verb with the valid attachments on plugins of a config of version 1.1.0 or later. No ADD
    /// or DEL runs meanwhile; `valid` is asked once that holds.
    pub async fn gc(&self, valid: impl FnOnce() -> Vec<(String, String)>) {
        let _gc = self.gc_lock.write().await;
        let valid = valid();
        if let Ok(rd) = std::fs::read_dir(&self.cache_dir) {
            for e in rd.flatten() {
                let Ok(bytes) = std::fs::read(e.path()) else { continue };
                let Ok(c) = serde_json::from_slice::<Cached>(&bytes) else { continue };
                if valid.iter().any(|(id, ifname)| *id == c.container_id && *ifname == c.if_name) {
                    continue;
                }
                let a = Attachment {
                    pod_id: c.container_id.clone(),
                    netns: PathBuf::new(),
                    ifname: c.if_name.clone(),
                    pod_name: String::new(),
                    pod_namespace: String::new(),
                    pod_uid: String::new(),
                    port_mappings: Vec::new(),
                };
                match self.del_locked(&a).await {
                    Ok(()) => info!(pod = %c.container_id, "released a stale pod network attachment"),
                    Err(err) => warn!(pod = %c.container_id, error = %err, "releasing a stale pod network attachment"),
                }
            }
        }
        let Ok(list) = config::load(&self.conf_dir) else { return };
        if !version_at_least(&list.cni_version, (1, 1, 0)) {
            return;
        }
        let attachments: Vec<Value> =
            valid.iter().map(|(id, ifname)| json!({ "containerID": id, "ifname": ifname })).collect();
        let inv =
            Invocation { command: "GC", container_id: "", netns: "", ifname: "", args: "", bin_dirs: &self.bin_dirs };
        for plugin in &list.plugins {
            let mut conf = Self::plugin_conf(&list, plugin, None, &Map::new());
            conf["cni.dev/valid-attachments"] = Value::Array(attachments.clone());
            if let Err(e) = exec::run(NetworkList::plugin_type(plugin), &conf, &inv).await {
                warn!(network = %list.name, error = %e, "CNI GC");
            }
        }
    }
}

fn version_at_least(v: &str, want: (u32, u32, u32)) -> bool {
    let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let got = (parts.next().unwrap_or(0), parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    got >= want
}

/// IP addresses (without prefix length) of a CNI result, any version.
pub fn result_ips(result: &Value) -> Vec<String> {
    let strip = |s: &str| s.split('/').next().unwrap_or("").to_string();
    if let Some(ips) = result.get("ips").and_then(Value::as_array) {
        return ips
            .iter()
            .filter_map(|ip| ip.get("address").and_then(Value::as_str))
            .map(strip)
            .filter(|s| !s.is_empty())
            .collect();
    }
    ["ip4", "ip6"]
        .iter()
        .filter_map(|k| result.get(k).and_then(|v| v.get("ip")).and_then(Value::as_str))
        .map(strip)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cni_arg_values_cannot_break_the_syntax() {
        assert_eq!(arg_value("web-7d9f-abcde"), "web-7d9f-abcde");
        assert_eq!(arg_value("0c5f3e0a-2b5c-4e1b-9d8f-1c2e3f4a5b6c"), "0c5f3e0a-2b5c-4e1b-9d8f-1c2e3f4a5b6c");
        assert_eq!(arg_value("a;K8S_POD_NAME=evil"), "a%3BK8S_POD_NAME%3Devil");
        assert_eq!(arg_value("nul\0new\nline"), "nul%00new%0Aline");
        assert_eq!(arg_value("ü"), "%C3%BC");
    }

    #[test]
    fn ips_of_every_result_version() {
        let r = json!({"cniVersion":"1.0.0","ips":[{"address":"10.1.0.5/24"},{"address":"fd00::5/64"}]});
        assert_eq!(result_ips(&r), vec!["10.1.0.5", "fd00::5"]);
        let old = json!({"cniVersion":"0.2.0","ip4":{"ip":"10.2.0.3/16"}});
        assert_eq!(result_ips(&old), vec!["10.2.0.3"]);
        assert!(result_ips(&Value::Null).is_empty());
    }

    #[test]
    fn plugin_conf_injects_name_version_prev_and_declared_capabilities() {
        let list = NetworkList::parse(
            Path::new("/n.conflist"),
            r#"{"cniVersion":"1.0.0","name":"net","plugins":[{"type":"bridge"},{"type":"portmap","capabilities":{"portMappings":true}}]}"#,
        )
        .unwrap();
        let mut rc = Map::new();
        rc.insert("portMappings".into(), json!([{"hostPort":8080,"containerPort":80,"protocol":"tcp"}]));
        let first = Cni::plugin_conf(&list, &list.plugins[0], None, &rc);
        assert_eq!(first["name"], "net");
        assert_eq!(first["cniVersion"], "1.0.0");
        assert!(first.get("runtimeConfig").is_none() && first.get("prevResult").is_none());
        let prev = json!({"ips":[]});
        let second = Cni::plugin_conf(&list, &list.plugins[1], Some(&prev), &rc);
        assert_eq!(second["runtimeConfig"]["portMappings"][0]["hostPort"], 8080);
        assert_eq!(second["prevResult"], prev);
    }

    #[test]
    fn versions_compare() {
        assert!(version_at_least("1.1.0", (1, 1, 0)));
        assert!(!version_at_least("1.0.0", (1, 1, 0)));
        assert!(!version_at_least("0.4.0", (1, 1, 0)));
    }
}
