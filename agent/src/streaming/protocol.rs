//! The remote command and port-forward protocol names, how a version is chosen, and what the
//! error stream says at the end of a session: pure, shared by the SPDY and WebSocket forms.

/// The remote command protocol versions (the `X-Stream-Protocol-Version` or WebSocket
/// subprotocol names, without the base64 variants).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    /// `channel.k8s.io`
    V1,
    /// `v2.channel.k8s.io`
    V2,
    /// `v3.channel.k8s.io`: resize.
    V3,
    /// `v4.channel.k8s.io`: the final status as JSON, with the exit code.
    V4,
    /// `v5.channel.k8s.io` (WebSocket): a close message per channel.
    V5,
}

/// Remote command over SPDY, in the order a server prefers them (kubelet's list: no v5).
pub const SPDY_REMOTECOMMAND: [(&str, Version); 4] = [
    ("v4.channel.k8s.io", Version::V4),
    ("v3.channel.k8s.io", Version::V3),
    ("v2.channel.k8s.io", Version::V2),
    ("channel.k8s.io", Version::V1),
];

/// Port-forward over SPDY.
pub const SPDY_PORTFORWARD: &str = "portforward.k8s.io";

/// The WebSocket subprotocols of a remote command: (name, version, base64 text frames).
pub const WS_REMOTECOMMAND: [(&str, Version, bool); 6] = [
    ("v5.channel.k8s.io", Version::V5, false),
    ("v4.channel.k8s.io", Version::V4, false),
    ("v4.base64.channel.k8s.io", Version::V4, true),
    ("channel.k8s.io", Version::V1, false),
    ("base64.channel.k8s.io", Version::V1, true),
    // No subprotocol at all: binary channels, as channel.k8s.io.
    ("", Version::V1, false),
];

/// Port-forward over WebSocket: SPDY tunnelled in binary messages (crictl --transport websocket).
pub const WS_SPDY_TUNNEL: &str = "SPDY/3.1+portforward.k8s.io";
/// Port-forward over WebSocket with two channels per port: (name, base64).
pub const WS_PORTFORWARD: [(&str, bool); 4] =
    [("v4.channel.k8s.io", false), ("v4.base64.channel.k8s.io", true), ("portforward.k8s.io", false), ("", false)];

/// The values of a header that may be given several times, each maybe a comma-separated list.
pub fn header_values<'a>(values: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    values.into_iter().flat_map(|v| v.split(',')).map(|v| v.trim().to_string()).filter(|v| !v.is_empty()).collect()
}

/// The first of the client's protocols (in the client's order) that `supported` has.
pub fn negotiate<T: Copy>(client: &[String], supported: &[(&'static str, T)]) -> Option<(&'static str, T)> {
    client.iter().find_map(|c| supported.iter().find(|(name, _)| name == c).copied())
}

/// How a session ended, as the error stream reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// The command exited with this code (not 0).
    Exited(i32),
    /// Something went wrong running it.
    Failed(String),
}

/// The bytes written on the error stream for `outcome`: v4 and later a JSON status, earlier
/// versions plain text on failure and nothing on success.
pub fn status_message(version: Version, outcome: &Outcome, cmd: &[String]) -> Vec<u8> {
    let text = match outcome {
        Outcome::Success => None,
        Outcome::Exited(code) => Some(format!(
            "command terminated with non-zero exit code: error executing command {cmd:?}, exit code {code}"
        )),
        Outcome::Failed(msg) => Some(format!("Internal error occurred: {msg}")),
    };
    if version < Version::V4 {
        return text.map(String::into_bytes).unwrap_or_default();
    }
    let value = match outcome {
        Outcome::Success => serde_json::json!({"status": "Success"}),
        Outcome::Exited(code) => serde_json::json!({
            "status": "Failure",
            "message": text,
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        Outcome::Failed(_) => serde_json::json!({
            "status": "Failure",
            "message": text,
            "reason": "InternalError",
            "code": 500,
        }),
    };
    value.to_string().into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_clients_order_wins() {
        let spdy: Vec<(&str, Version)> = SPDY_REMOTECOMMAND.to_vec();
        let client = strings(&["v5.channel.k8s.io", "v4.channel.k8s.io", "v3.channel.k8s.io", "channel.k8s.io"]);
        assert_eq!(negotiate(&client, &spdy), Some(("v4.channel.k8s.io", Version::V4)));
        assert_eq!(
            negotiate(&strings(&["channel.k8s.io", "v4.channel.k8s.io"]), &spdy).map(|p| p.1),
            Some(Version::V1)
        );
        assert_eq!(negotiate(&strings(&["v9.channel.k8s.io"]), &spdy), None);
        assert_eq!(negotiate(&strings(&[]), &spdy), None);
    }

    #[test]
    fn header_values_split_commas_and_lines() {
        assert_eq!(
            header_values(["v4.channel.k8s.io, v3.channel.k8s.io", "channel.k8s.io", " "]),
            strings(&["v4.channel.k8s.io", "v3.channel.k8s.io", "channel.k8s.io"])
        );
    }

    #[test]
    fn v4_status_carries_the_exit_code_as_client_go_reads_it() {
        let cmd = strings(&["sh", "-c", "exit 3"]);
        let v: serde_json::Value =
            serde_json::from_slice(&status_message(Version::V4, &Outcome::Exited(3), &cmd)).unwrap();
        assert_eq!(v["status"], "Failure");
        assert_eq!(v["reason"], "NonZeroExitCode");
        assert_eq!(v["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(v["details"]["causes"][0]["message"], "3");
        assert_eq!(status_message(Version::V5, &Outcome::Success, &cmd), br#"{"status":"Success"}"#);
        let v: serde_json::Value =
            serde_json::from_slice(&status_message(Version::V4, &Outcome::Failed("boom".into()), &cmd)).unwrap();
        assert_eq!((v["reason"].as_str(), v["code"].as_i64()), (Some("InternalError"), Some(500)));
    }

    #[test]
    fn older_versions_say_nothing_on_success_and_text_on_failure() {
        assert!(status_message(Version::V3, &Outcome::Success, &[]).is_empty());
        let text = String::from_utf8(status_message(Version::V2, &Outcome::Exited(2), &strings(&["false"]))).unwrap();
        assert!(text.starts_with("command terminated with non-zero exit code"), "{text}");
    }
}
