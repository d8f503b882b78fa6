//! The OCI distribution API client: endpoints (mirrors first, then the registry), manifests and
//! blobs with digest and size verification, and authentication on a 401.

use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use reqwest::{Method, Response, StatusCode};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::auth::{Challenge, Credentials, TokenResponse};
use super::manifest::{Descriptor, ACCEPT_MANIFESTS};
use super::reference::{Reference, DEFAULT_REGISTRY};
use crate::config::RegistryConfig;

/// Largest manifest or config we accept.
const MAX_DOCUMENT: u64 = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// registry {registry}: cannot connect: {source}
    #[error("registry {registry}: cannot connect: {source}")]
    Unreachable { registry: String, source: reqwest::Error },
    /// registry {registry}: {what}: unauthorized: {detail}
    #[error("registry {registry}: {what}: unauthorized: {detail}")]
    Unauthorized { registry: String, what: String, detail: String },
    /// registry {registry}: {what}: not found
    #[error("registry {registry}: {what}: not found")]
    NotFound { registry: String, what: String },
    /// registry {registry}: {what}: unexpected status {status}: {body}
    #[error("registry {registry}: {what}: unexpected status {status}: {body}")]
    Status { registry: String, what: String, status: StatusCode, body: String },
    /// registry {registry}: {what}: digest mismatch
    #[error("registry {registry}: {what}: digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch { registry: String, what: String, expected: String, actual: String },
    /// registry {registry}: {what}: size mismatch
    #[error("registry {registry}: {what}: size mismatch: expected {expected} bytes, got {actual}")]
    SizeMismatch { registry: String, what: String, expected: u64, actual: u64 },
    /// registry {registry}: {what}: transfer failed
    #[error("registry {registry}: {what}: transfer failed: {source}")]
    Transfer { registry: String, what: String, source: reqwest::Error },
    /// writing {path}: {source}
    #[error("writing {path}: {source}")]
    Io { path: String, source: std::io::Error },
    /// registry {registry}: {what}: {detail}
    #[error("registry {registry}: {what}: {detail}")]
    Protocol { registry: String, what: String, detail: String },
}

impl RegistryError {
    /// A failure that the next endpoint (the registry after a mirror) may not have.
    pub fn try_next_endpoint(&self) -> bool {
        matches!(
            self,
            RegistryError::Unreachable { .. }
                | RegistryError::NotFound { .. }
                | RegistryError::Status { .. }
                | RegistryError::Transfer { .. }
        )
    }
}

/// One place to fetch a repository from: a mirror or the registry itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `https://registry-1.docker.io`, `http://127.0.0.1:5000`, `https://mirror/prefix`
    pub base: String,
    /// For messages: the host the user knows (`docker.io`, or the mirror's URL).
    pub name: String,
}

pub struct Registries {
    http: reqwest::Client,
    config: RegistryConfig,
}

impl Registries {
    pub fn new(config: RegistryConfig) -> Result<Registries, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(15))
            .read_timeout(Duration::from_secs(120))
            .user_agent(concat!("corral/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Registries { http, config })
    }

    /// Mirrors configured for the reference's registry, in order, then the registry itself.
    pub fn endpoints(&self, reference: &Reference) -> Vec<Endpoint> {
        let mut out: Vec<Endpoint> = Vec::new();
        if let Some(mirror) = self.config.mirrors.get(&reference.registry) {
            for e in &mirror.endpoints {
                let base = e.trim_end_matches('/').trim_end_matches("/v2").to_string();
                out.push(Endpoint { name: base.clone(), base });
            }
        }
        let host =
            if reference.registry == DEFAULT_REGISTRY { "registry-1.docker.io" } else { reference.registry.as_str() };
        let scheme = if self.is_insecure(&reference.registry) { "http" } else { "https" };
        out.push(Endpoint { base: format!("{scheme}://{host}"), name: reference.registry.clone() });
        out
    }

    /// Plain HTTP is used only for loopback registries and those configured insecure.
    fn is_insecure(&self, registry: &str) -> bool {
        let host = match registry.strip_prefix('[') {
            Some(rest) => rest.split(']').next().unwrap_or(""),
            None => registry.rsplit_once(':').map(|(h, _)| h).unwrap_or(registry),
        };
        let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
        loopback || self.config.insecure.iter().any(|i| i == registry || i == host)
    }

    pub fn session(&self, endpoint: Endpoint, repository: &str, creds: Credentials) -> Session {
        Session {
            http: self.http.clone(),
            endpoint,
            repository: repository.to_string(),
            authorization: tokio::sync::Mutex::new(
                (!creds.registry_token.is_empty()).then(|| format!("Bearer {}", creds.registry_token)),
            ),
            creds,
        }
    }
}

/// Access to one repository on one endpoint, remembering the authorization that worked.
pub struct Session {
    http: reqwest::Client,
    pub endpoint: Endpoint,
    repository: String,
    creds: Credentials,
    authorization: tokio::sync::Mutex<Option<String>>,
}

/// A manifest as fetched.
pub struct Fetched {
    pub body: Vec<u8>,
    pub content_type: String,
    pub digest: String,
}

impl Session {
    fn url(&self, kind: &str, object: &str) -> String {
        format!("{}/v2/{}/{}/{}", self.endpoint.base, self.repository, kind, object)
    }

    fn registry(&self) -> String {
        self.endpoint.name.clone()
    }

    /// Sends a GET, authenticating and retrying once when the registry answers 401.
    async fn get(&self, url: &str, accept: Option<&str>, what: &str) -> Result<Response, RegistryError> {
        let mut retried = false;
        loop {
            let mut req = self.http.request(Method::GET, url);
            if let Some(accept) = accept {
                req = req.header(ACCEPT, accept);
            }
            if let Some(auth) = self.authorization.lock().await.clone() {
                req = req.header(AUTHORIZATION, auth);
            }
            let resp =
                req.send().await.map_err(|source| RegistryError::Unreachable { registry: self.registry(), source })?;
            match resp.status() {
                StatusCode::UNAUTHORIZED if !retried => {
                    retried = true;
                    let header =
                        resp.headers().get(WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                    let auth = self.authorize(&header, what).await?;
                    *self.authorization.lock().await = Some(auth);
                }
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                    let detail = if self.creds.has_basic()
                        || !self.creds.identity_token.is_empty()
                        || !self.creds.registry_token.is_empty()
                    {
                        "credentials rejected"
                    } else {
                        "authentication required and no credentials given"
                    };
                    return Err(RegistryError::Unauthorized {
                        registry: self.registry(),
                        what: what.into(),
                        detail: detail.into(),
                    });
                }
                StatusCode::NOT_FOUND => {
                    return Err(RegistryError::NotFound { registry: self.registry(), what: what.into() })
                }
                s if s.is_success() => return Ok(resp),
                status => {
                    let body: String = resp.text().await.unwrap_or_default().chars().take(300).collect();
                    return Err(RegistryError::Status { registry: self.registry(), what: what.into(), status, body });
                }
            }
        }
    }

    /// The Authorization header value answering a challenge.
    async fn authorize(&self, header: &str, what: &str) -> Result<String, RegistryError> {
        let unauthorized =
            |detail: String| RegistryError::Unauthorized { registry: self.registry(), what: what.into(), detail };
        match Challenge::parse(header) {
            Some(Challenge::Basic) if self.creds.has_basic() => Ok(self.creds.basic_header()),
            Some(Challenge::Basic) => Err(unauthorized("authentication required and no credentials given".into())),
            Some(Challenge::Bearer { realm, service, scope }) => {
                let scope = scope.unwrap_or_else(|| format!("repository:{}:pull", self.repository));
                let token = self.fetch_token(&realm, service.as_deref(), &scope).await.map_err(unauthorized)?;
                Ok(format!("Bearer {token}"))
            }
            None => Err(unauthorized(format!("unsupported challenge {header:?}"))),
        }
    }

    async fn fetch_token(&self, realm: &str, service: Option<&str>, scope: &str) -> Result<String, String> {
        let resp = if !self.creds.identity_token.is_empty() {
            let mut form = vec![
                ("grant_type", "refresh_token"),
                ("refresh_token", self.creds.identity_token.as_str()),
                ("client_id", "corral"),
                ("scope", scope),
            ];
            if let Some(s) = service {
                form.push(("service", s));
            }
            self.http.post(realm).form(&form).send().await
        } else {
            let mut query = vec![("scope", scope)];
            if let Some(s) = service {
                query.push(("service", s));
            }
            let mut req = self.http.get(realm).query(&query);
            if self.creds.has_basic() {
                req = req.header(AUTHORIZATION, self.creds.basic_header());
            }
            req.send().await
        }
        .map_err(|e| format!("token endpoint {realm}: {e}"))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(format!("token endpoint {realm} answered {status}"));
        }
        let body: TokenResponse = resp.json().await.map_err(|e| format!("token endpoint {realm}: {e}"))?;
        body.into_token().ok_or_else(|| format!("token endpoint {realm} returned no token"))
    }

    /// Fetches a manifest or index by tag or digest; its digest is computed from the body and
    /// checked against the requested digest and the registry's Docker-Content-Digest.
    pub async fn manifest(&self, object: &str) -> Result<Fetched, RegistryError> {
        let what = format!("manifest {}:{}", self.repository, object);
        let resp = self.get(&self.url("manifests", object), Some(ACCEPT_MANIFESTS), &what).await?;
        let content_type = resp.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let header_digest = resp.headers().get("docker-content-digest").and_then(|v| v.to_str().ok()).map(String::from);
        let body = self.read_limited(resp, MAX_DOCUMENT, &what).await?;
        let digest = super::manifest::digest_of(&body);
        let expected = if object.starts_with("sha256:") {
            Some(object.to_string())
        } else {
            header_digest.filter(|d| d.starts_with("sha256:"))
        };
        if let Some(expected) = expected {
            if expected != digest {
                return Err(RegistryError::DigestMismatch {
                    registry: self.registry(),
                    what,
                    expected,
                    actual: digest,
                });
            }
        }
        Ok(Fetched { body, content_type, digest })
    }

    /// A small blob (an image config) into memory, verified.
    pub async fn blob_bytes(&self, desc: &Descriptor) -> Result<Vec<u8>, RegistryError> {
        let what = format!("blob {}", desc.digest);
        if desc.size > MAX_DOCUMENT {
            return Err(RegistryError::Protocol {
                registry: self.registry(),
                what,
                detail: format!("{} bytes is too large for a config", desc.size),
            });
        }
        let resp = self.get(&self.url("blobs", &desc.digest), None, &what).await?;
        let body = self.read_limited(resp, desc.size, &what).await?;
        self.verify(&what, desc, body.len() as u64, &super::manifest::digest_of(&body))?;
        Ok(body)
    }

    /// Streams a blob into `dest`, verifying size and digest; on any error `dest` is removed.
    pub async fn download(&self, desc: &Descriptor, dest: &Path) -> Result<(), RegistryError> {
        let result = self.download_inner(desc, dest).await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(dest).await;
        }
        result
    }

    async fn download_inner(&self, desc: &Descriptor, dest: &Path) -> Result<(), RegistryError> {
        let what = format!("blob {}", desc.digest);
        let io_err = |source| RegistryError::Io { path: dest.display().to_string(), source };
        let resp = self.get(&self.url("blobs", &desc.digest), None, &what).await?;
        let mut file = tokio::fs::File::create(dest).await.map_err(io_err)?;
        let mut hasher = Sha256::new();
        let mut written: u64 = 0;
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|source| RegistryError::Transfer {
                registry: self.registry(),
                what: what.clone(),
                source,
            })?;
            written += chunk.len() as u64;
            if written > desc.size {
                return Err(RegistryError::SizeMismatch {
                    registry: self.registry(),
                    what,
                    expected: desc.size,
                    actual: written,
                });
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(io_err)?;
        }
        file.flush().await.map_err(io_err)?;
        let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
        self.verify(&what, desc, written, &actual)
    }

    fn verify(&self, what: &str, desc: &Descriptor, size: u64, digest: &str) -> Result<(), RegistryError> {
        if size != desc.size {
            return Err(RegistryError::SizeMismatch {
                registry: self.registry(),
                what: what.into(),
                expected: desc.size,
                actual: size,
            });
        }
        if digest != desc.digest {
            return Err(RegistryError::DigestMismatch {
                registry: self.registry(),
                what: what.into(),
                expected: desc.digest.clone(),
                actual: digest.into(),
            });
        }
        Ok(())
    }

    async fn read_limited(&self, resp: Response, limit: u64, what: &str) -> Result<Vec<u8>, RegistryError> {
        let mut body = Vec::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|source| RegistryError::Transfer {
                registry: self.registry(),
                what: what.into(),
                source,
            })?;
            if (body.len() + chunk.len()) as u64 > limit {
                return Err(RegistryError::SizeMismatch {
                    registry: self.registry(),
                    what: what.into(),
                    expected: limit,
                    actual: (body.len() + chunk.len()) as u64,
                });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MirrorConfig;

    #[test]
    fn endpoints_list_mirrors_then_registry() {
        let mut config = RegistryConfig::default();
        config.mirrors.insert("docker.io".into(), MirrorConfig { endpoints: vec!["http://127.0.0.1:5000/".into()] });
        config.insecure.push("reg.lan:5000".into());
        let regs = Registries::new(config).unwrap();
        let hub = regs.endpoints(&Reference::parse("busybox").unwrap());
        assert_eq!(
            hub.iter().map(|e| e.base.as_str()).collect::<Vec<_>>(),
            ["http://127.0.0.1:5000", "https://registry-1.docker.io"]
        );
        assert_eq!(regs.endpoints(&Reference::parse("127.0.0.1:9/a").unwrap())[0].base, "http://127.0.0.1:9");
        assert_eq!(regs.endpoints(&Reference::parse("localhost:9/a").unwrap())[0].base, "http://localhost:9");
        assert_eq!(regs.endpoints(&Reference::parse("reg.lan:5000/a").unwrap())[0].base, "http://reg.lan:5000");
        assert_eq!(regs.endpoints(&Reference::parse("quay.io/a/b").unwrap())[0].base, "https://quay.io");
    }
}
