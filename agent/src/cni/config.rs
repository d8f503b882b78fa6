//! Network configuration files: the first `.conflist`, `.conf` or `.json` file of the conf dir in
//! lexical order, as libcni picks it. A single-plugin `.conf` is treated as a list of one.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// no network config found in {0}
    #[error("no network config found in {0}")]
    Missing(String),
    /// network config {path}: {detail}
    #[error("network config {path}: {detail}")]
    Invalid { path: String, detail: String },
}

/// A network configuration list, as loaded.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkList {
    pub name: String,
    pub cni_version: String,
    /// Each plugin's config object (with at least "type").
    pub plugins: Vec<Map<String, Value>>,
    /// The file it came from, for messages.
    pub source: PathBuf,
    /// The list as one JSON document, cached per attachment so DEL uses what ADD used.
    pub raw: Value,
}

impl NetworkList {
    pub fn parse(path: &Path, text: &str) -> Result<NetworkList, ConfigError> {
        let invalid = |detail: String| ConfigError::Invalid { path: path.display().to_string(), detail };
        let value: Value = serde_json::from_str(text).map_err(|e| invalid(format!("not valid JSON: {e}")))?;
        let obj = value.as_object().ok_or_else(|| invalid("not a JSON object".into()))?;
        let is_list = path.extension().is_some_and(|e| e == "conflist") || obj.contains_key("plugins");
        let raw = if is_list {
            value.clone()
        } else {
            // A single plugin config: its name and version become the list's.
            let mut list = Map::new();
            for key in ["cniVersion", "name"] {
                if let Some(v) = obj.get(key) {
                    list.insert(key.into(), v.clone());
                }
            }
            list.insert("plugins".into(), Value::Array(vec![value.clone()]));
            Value::Object(list)
        };
        NetworkList::from_raw(path, raw)
    }

    /// Rebuilds a list from its cached JSON document.
    pub fn from_raw(path: &Path, raw: Value) -> Result<NetworkList, ConfigError> {
        let invalid = |detail: String| ConfigError::Invalid { path: path.display().to_string(), detail };
        let name = raw
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| invalid("missing \"name\"".into()))?
            .to_string();
        let cni_version = raw
            .get("cniVersion")
            .and_then(Value::as_str)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| invalid("missing \"cniVersion\"".into()))?
            .to_string();
        let plugins_value =
            raw.get("plugins").and_then(Value::as_array).ok_or_else(|| invalid("missing \"plugins\" list".into()))?;
        if plugins_value.is_empty() {
            return Err(invalid("\"plugins\" is empty".into()));
        }
        let mut plugins = Vec::new();
        for (i, p) in plugins_value.iter().enumerate() {
            let obj = p.as_object().ok_or_else(|| invalid(format!("plugin {i} is not an object")))?;
            let kind = obj.get("type").and_then(Value::as_str).unwrap_or("");
            if kind.is_empty() || kind.contains('/') {
                return Err(invalid(format!("plugin {i} has no valid \"type\"")));
            }
            plugins.push(obj.clone());
        }
        Ok(NetworkList { name, cni_version, plugins, source: path.to_path_buf(), raw })
    }

    pub fn plugin_type(plugin: &Map<String, Value>) -> &str {
        plugin.get("type").and_then(Value::as_str).unwrap_or("")
    }

    /// Whether the plugin declares the capability (`"capabilities": {"portMappings": true}`).
    pub fn has_capability(plugin: &Map<String, Value>, cap: &str) -> bool {
        plugin.get("capabilities").and_then(|c| c.get(cap)).and_then(Value::as_bool).unwrap_or(false)
    }
}

/// Loads the first valid-looking config file of `dir` in lexical order.
pub fn load(dir: &Path) -> Result<NetworkList, ConfigError> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "conflist" || e == "conf" || e == "json"))
            .filter(|p| p.is_file())
            .collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    let first = files.first().ok_or_else(|| ConfigError::Missing(dir.display().to_string()))?;
    let text = std::fs::read_to_string(first)
        .map_err(|e| ConfigError::Invalid { path: first.display().to_string(), detail: e.to_string() })?;
    NetworkList::parse(first, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_first_file_and_wraps_single_plugins() {
        let d = tempfile::tempdir().unwrap();
        assert!(matches!(load(d.path()), Err(ConfigError::Missing(_))));
        std::fs::write(d.path().join("20-b.conflist"), r#"{"cniVersion":"1.0.0","name":"b","plugins":[{"type":"bridge"},{"type":"portmap","capabilities":{"portMappings":true}}]}"#).unwrap();
        std::fs::write(d.path().join("10-a.conf"), r#"{"cniVersion":"0.4.0","name":"a","type":"bridge"}"#).unwrap();
        std::fs::write(d.path().join("05-ignored.txt"), "x").unwrap();
        let a = load(d.path()).unwrap();
        assert_eq!((a.name.as_str(), a.cni_version.as_str(), a.plugins.len()), ("a", "0.4.0", 1));
        std::fs::remove_file(d.path().join("10-a.conf")).unwrap();
        let b = load(d.path()).unwrap();
        assert_eq!(b.plugins.len(), 2);
        assert!(NetworkList::has_capability(&b.plugins[1], "portMappings"));
        assert!(!NetworkList::has_capability(&b.plugins[0], "portMappings"));
    }

    #[test]
    fn invalid_configs_are_reported() {
        let p = Path::new("/x.conflist");
        assert!(NetworkList::parse(p, "{").is_err());
        assert!(NetworkList::parse(p, r#"{"cniVersion":"1.0.0","plugins":[{"type":"x"}]}"#).is_err());
        assert!(NetworkList::parse(p, r#"{"cniVersion":"1.0.0","name":"n","plugins":[]}"#).is_err());
        assert!(NetworkList::parse(p, r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"../x"}]}"#).is_err());
    }
}
