//! The streaming tokens: each URL that Exec, Attach and PortForward return carries one. A token
//! is random (from the OS), used once, valid for a minute, and only so many wait at a time.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;

/// How long a URL stays valid (kubelet's streaming server: one minute).
pub const TTL: Duration = Duration::from_secs(60);
/// Pending tokens at most (kubelet's: 1000).
pub const MAX_PENDING: usize = 1000;
/// Random bytes per token (kubelet's carry 6).
const TOKEN_BYTES: usize = 12;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// too many pending
    #[error("maximum number of in-flight streaming requests ({0}) exceeded")]
    Exhausted(usize),
    /// no randomness
    #[error("no random bytes from the OS for a streaming token: {0}")]
    Random(String),
}

/// Pending requests by token.
pub struct Tokens<T> {
    pending: Mutex<HashMap<String, (Instant, T)>>,
    ttl: Duration,
    max: usize,
}

impl<T> Tokens<T> {
    pub fn new(ttl: Duration, max: usize) -> Tokens<T> {
        Tokens { pending: Mutex::new(HashMap::new()), ttl, max }
    }

    /// Stores `value` under a new token.
    pub fn insert(&self, value: T) -> Result<String, TokenError> {
        let now = Instant::now();
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.retain(|_, (at, _)| now.duration_since(*at) < self.ttl);
        if pending.len() >= self.max {
            return Err(TokenError::Exhausted(self.max));
        }
        loop {
            let mut bytes = [0u8; TOKEN_BYTES];
            getrandom::fill(&mut bytes).map_err(|e| TokenError::Random(e.to_string()))?;
            let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
            if !pending.contains_key(&token) {
                pending.insert(token.clone(), (now, value));
                return Ok(token);
            }
        }
    }

    /// Takes the request of `token` out: None when unknown, used already or expired.
    pub fn take(&self, token: &str) -> Option<T> {
        let (at, value) = self.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(token)?;
        (at.elapsed() < self.ttl).then_some(value)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.pending.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_used_once() {
        let t = Tokens::new(TTL, 10);
        let a = t.insert(1).unwrap();
        let b = t.insert(2).unwrap();
        assert_ne!(a, b);
        assert!(a.len() >= 16 && a.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'), "{a}");
        assert_eq!(t.take(&b), Some(2));
        assert_eq!(t.take(&b), None);
        assert_eq!(t.take(&a), Some(1));
        assert_eq!(t.take("nosuch"), None);
    }

    #[test]
    fn expired_tokens_are_refused_and_make_room() {
        let t = Tokens::new(Duration::from_millis(30), 2);
        let a = t.insert(1).unwrap();
        t.insert(2).unwrap();
        assert_eq!(t.insert(3), Err(TokenError::Exhausted(2)));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(t.take(&a), None);
        t.insert(4).unwrap();
        assert_eq!(t.len(), 1);
    }
}
