//! The edge to ZenML servers: a small client of their REST API (`/api/v1`), logged in with a
//! service account's API key. What to make there is decided in [`crate::stack::zenml`]; this
//! module only speaks HTTP, keeps one login per server and key, and turns answers into
//! [`ZenmlError`]s whose text never carries a credential.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::bulkhead::{self, CONNECT_TIMEOUT};

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// How long one request may take, answer included (and of it, connecting: [`CONNECT_TIMEOUT`]).
const TIMEOUT: Duration = Duration::from_secs(15);
/// The largest answer read; a list of a few hundred components is far below it.
const MAX_ANSWER: usize = 8 << 20;
/// The oldest ZenML release whose REST API this client speaks: stacks, components and secrets
/// owned by users rather than projects, components' `labels`, `/api/v1/login` with API keys.
const OLDEST_MINOR: u64 = 90;

/// Why a request to a ZenML server failed. No variant holds a request body or a credential.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ZenmlError {
    #[error("no answer from the ZenML server at {url}: {why}")]
    Unreachable { url: String, why: String },
    #[error("the ZenML server at {url} refused the API key ({detail})")]
    Unauthorized { url: String, detail: String },
    #[error(
        "the ZenML server at {url} runs ZenML {version}; the operator speaks 0.{OLDEST_MINOR} and later 0.x releases"
    )]
    VersionUnsupported { url: String, version: String },
    #[error("not found")]
    NotFound,
    #[error("the ZenML server refused {what} ({status}): {detail}")]
    Rejected { what: String, status: u16, detail: String },
    #[error("the ZenML server failed {what} ({status}): {detail}")]
    Unavailable { what: String, status: u16, detail: String },
}

/// A login: the server's base URL and the bearer token its `/login` gave for an API key.
#[derive(Debug)]
pub struct Session {
    base: String,
    token: String,
    /// The projects this login found on the server (looked up once per login).
    projects: Mutex<std::collections::HashSet<String>>,
}

/// The process's ZenML logins, one per server and API key, and which one last served each
/// Stack (so a Stack whose API key Secret went with its namespace can still remove what it made).
#[derive(Default)]
pub struct Sessions {
    http: OnceLock<Option<HttpClient>>,
    by_key: Mutex<HashMap<[u8; 32], Arc<Session>>>,
    by_stack: Mutex<HashMap<String, Arc<Session>>>,
}

/// One server, as one API key (or a remembered login) sees it: JSON in, JSON out.
pub struct Server<'a> {
    sessions: &'a Sessions,
    session: Arc<Session>,
    /// The API key, to log in again when the token was refused (None: a remembered login only).
    api_key: Option<String>,
}

fn key_digest(url: &str, api_key: &str) -> [u8; 32] {
    let mut digest = Sha256::new();
    digest.update(url.as_bytes());
    digest.update([0]);
    digest.update(api_key.as_bytes());
    digest.finalize().into()
}

/// The base URL without a trailing slash.
fn base_of(url: &str) -> String {
    url.trim_end_matches('/').to_owned()
}

impl Sessions {
    fn http(&self) -> Option<&HttpClient> {
        self.http
            .get_or_init(|| {
                let mut tcp = HttpConnector::new();
                tcp.enforce_http(false);
                tcp.set_connect_timeout(Some(CONNECT_TIMEOUT));
                let https = match hyper_rustls::HttpsConnectorBuilder::new().with_native_roots() {
                    Ok(builder) => builder.https_or_http().enable_http1().wrap_connector(tcp),
                    Err(error) => {
                        tracing::error!(%error, "no TLS root certificates for ZenML servers");
                        return None;
                    }
                };
                Some(Client::builder(TokioExecutor::new()).build(https))
            })
            .as_ref()
    }

    /// The server at `url` as the service account of `api_key` sees it: a login kept from before,
    /// or a new one (after checking the server's release).
    pub async fn server(&self, url: &str, api_key: &str) -> Result<Server<'_>, ZenmlError> {
        let digest = key_digest(url, api_key);
        let cached = self.by_key.lock().unwrap_or_else(|p| p.into_inner()).get(&digest).cloned();
        let session = match cached {
            Some(session) => session,
            None => self.login(url, api_key, digest).await?,
        };
        Ok(Server { sessions: self, session, api_key: Some(api_key.to_owned()) })
    }

    /// The login that last served the Stack `uid`, if this process still has it.
    pub fn remembered(&self, uid: &str) -> Option<Server<'_>> {
        let session = self.by_stack.lock().unwrap_or_else(|p| p.into_inner()).get(uid).cloned()?;
        Some(Server { sessions: self, session, api_key: None })
    }

    /// Keeps `server`'s login for the Stack `uid`.
    pub fn remember(&self, uid: &str, server: &Server<'_>) {
        self.by_stack.lock().unwrap_or_else(|p| p.into_inner()).insert(uid.to_owned(), server.session.clone());
    }

    /// Drops the login kept for the Stack `uid`.
    pub fn forget(&self, uid: &str) {
        self.by_stack.lock().unwrap_or_else(|p| p.into_inner()).remove(uid);
    }

    async fn login(&self, url: &str, api_key: &str, digest: [u8; 32]) -> Result<Arc<Session>, ZenmlError> {
        let base = base_of(url);
        let version = self.send(&base, None, Method::GET, "/api/v1/version", None, false).await?;
        check_version(&base, version.as_str().unwrap_or_default())?;
        let form = format!("grant_type=zenml-api-key&password={}", urlencoding::encode(api_key));
        crate::metrics::count_zenml_request("login");
        let answer = match self.exchange(&base, None, Method::POST, "/api/v1/login", Body::Form(form), true).await {
            Err(ZenmlError::Rejected { status: 401 | 403, detail, .. }) => {
                return Err(ZenmlError::Unauthorized { url: base, detail });
            }
            other => other?,
        };
        let Some(token) = answer.get("access_token").and_then(Value::as_str) else {
            return Err(ZenmlError::Rejected {
                what: "the login".into(),
                status: 200,
                detail: "the answer has no access_token".into(),
            });
        };
        let session = Arc::new(Session { base, token: token.to_owned(), projects: Mutex::default() });
        self.by_key.lock().unwrap_or_else(|p| p.into_inner()).insert(digest, session.clone());
        Ok(session)
    }

    /// One request with a JSON body (or none); counts it by verb.
    async fn send(
        &self,
        base: &str,
        token: Option<&str>,
        method: Method,
        path: &str,
        body: Option<&Value>,
        sensitive: bool,
    ) -> Result<Value, ZenmlError> {
        crate::metrics::count_zenml_request(match method {
            Method::GET => "get",
            Method::POST => "create",
            Method::PUT => "update",
            Method::DELETE => "delete",
            _ => "other",
        });
        let body = match body {
            Some(value) => Body::Json(value.to_string()),
            None => Body::Empty,
        };
        self.exchange(base, token, method, path, body, sensitive).await
    }

    /// Sends one request and reads the JSON answer. With `sensitive`, the server's error text is
    /// left out of the error (it may quote the request, which holds a credential).
    async fn exchange(
        &self,
        base: &str,
        token: Option<&str>,
        method: Method,
        path: &str,
        body: Body,
        sensitive: bool,
    ) -> Result<Value, ZenmlError> {
        let unreachable = |why: String| ZenmlError::Unreachable { url: base.to_owned(), why };
        let Some(http) = self.http() else {
            return Err(unreachable("no TLS root certificates could be loaded".into()));
        };
        let what = format!("{method} {}", path.split('?').next().unwrap_or(path));
        let mut request = Request::builder().method(method).uri(format!("{base}{path}"));
        request = request.header(header::ACCEPT, "application/json");
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let (content_type, bytes) = match body {
            Body::Empty => (None, Bytes::new()),
            Body::Json(text) => (Some("application/json"), Bytes::from(text)),
            Body::Form(text) => (Some("application/x-www-form-urlencoded"), Bytes::from(text)),
        };
        if let Some(content_type) = content_type {
            request = request.header(header::CONTENT_TYPE, content_type);
        }
        let request = request.body(Full::new(bytes)).map_err(|e| unreachable(format!("invalid request: {e}")))?;
        // A server that keeps its share of the workers waiting gets no more (see bulkhead).
        let permit = bulkhead::enter(base).await.map_err(|busy| unreachable(busy.to_string()))?;
        let exchange = async {
            let response = http.request(request).await.map_err(|e| unreachable(error_chain(&e)))?;
            permit.answered();
            let status = response.status().as_u16();
            let collected = Limited::new(response.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| unreachable(format!("reading the answer: {e}")))?;
            Ok::<_, ZenmlError>((status, collected.to_bytes()))
        };
        let (status, bytes) = tokio::time::timeout(TIMEOUT, exchange)
            .await
            .map_err(|_| unreachable(format!("no answer within {} s", TIMEOUT.as_secs())))??;
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        match status {
            200..=299 => Ok(value),
            404 => Err(ZenmlError::NotFound),
            401 => Err(ZenmlError::Unauthorized {
                url: base.to_owned(),
                detail: if sensitive { "401".into() } else { error_detail(&value) },
            }),
            400..=499 => Err(ZenmlError::Rejected {
                what,
                status,
                detail: if sensitive { error_name(&value) } else { error_detail(&value) },
            }),
            _ => Err(ZenmlError::Unavailable {
                what,
                status,
                detail: if sensitive { error_name(&value) } else { error_detail(&value) },
            }),
        }
    }
}

enum Body {
    Empty,
    Json(String),
    Form(String),
}

impl Server<'_> {
    pub async fn get(&self, path: &str) -> Result<Value, ZenmlError> {
        self.call(Method::GET, path, None, false).await
    }

    /// Creates; `sensitive` when the body holds a credential.
    pub async fn post(&self, path: &str, body: &Value, sensitive: bool) -> Result<Value, ZenmlError> {
        self.call(Method::POST, path, Some(body), sensitive).await
    }

    /// Updates; `sensitive` when the body holds a credential.
    pub async fn put(&self, path: &str, body: &Value, sensitive: bool) -> Result<Value, ZenmlError> {
        self.call(Method::PUT, path, Some(body), sensitive).await
    }

    pub async fn delete(&self, path: &str) -> Result<(), ZenmlError> {
        match self.call(Method::DELETE, path, None, false).await {
            Ok(_) | Err(ZenmlError::NotFound) => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// Whether the server has the project `name`: asked once per login.
    pub async fn has_project(&self, name: &str) -> Result<bool, ZenmlError> {
        if self.session.projects.lock().unwrap_or_else(|p| p.into_inner()).contains(name) {
            return Ok(true);
        }
        match self.get(&format!("/api/v1/projects/{}", urlencoding::encode(name))).await {
            Ok(_) => {
                self.session.projects.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_owned());
                Ok(true)
            }
            Err(ZenmlError::NotFound) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// The server's base URL.
    pub fn url(&self) -> &str {
        &self.session.base
    }

    /// One request; a refused token (expired, or the server restarted with another signing key)
    /// logs in again once with the API key.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        sensitive: bool,
    ) -> Result<Value, ZenmlError> {
        let sessions = self.sessions;
        let base = &self.session.base;
        match sessions.send(base, Some(&self.session.token), method.clone(), path, body, sensitive).await {
            Err(ZenmlError::Unauthorized { .. }) if self.api_key.is_some() => {
                let api_key = self.api_key.as_deref().unwrap_or_default();
                let digest = key_digest(base, api_key);
                sessions.by_key.lock().unwrap_or_else(|p| p.into_inner()).remove(&digest);
                let session = sessions.login(base, api_key, digest).await?;
                sessions.send(&session.base, Some(&session.token), method, path, body, sensitive).await
            }
            other => other,
        }
    }
}

/// Whether this client speaks the REST API of ZenML `version` (for example `0.98.0`).
fn check_version(url: &str, version: &str) -> Result<(), ZenmlError> {
    let mut parts = version.split('.').map(|p| p.parse::<u64>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(0), Some(minor)) if minor >= OLDEST_MINOR => Ok(()),
        _ => Err(ZenmlError::VersionUnsupported { url: url.to_owned(), version: version.chars().take(40).collect() }),
    }
}

/// The exception name of a ZenML error answer (`{"detail": [NAME, message]}`), or nothing.
fn error_name(answer: &Value) -> String {
    match answer.get("detail") {
        Some(Value::Array(parts)) => parts.first().and_then(Value::as_str).unwrap_or_default().to_owned(),
        _ => String::new(),
    }
}

/// The text of a ZenML error answer, shortened: `{"detail": [NAME, message]}`, FastAPI's
/// validation list (`{"detail": [{"loc": [...], "msg": ...}]}`, whose `input` is left out: it
/// quotes the request), or a plain string.
fn error_detail(answer: &Value) -> String {
    let text = match answer.get("detail") {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .map(|part| match part {
                Value::String(text) => text.clone(),
                Value::Object(fields) => {
                    let place = fields
                        .get("loc")
                        .and_then(Value::as_array)
                        .map(|loc| {
                            loc.iter().map(|l| l.to_string().trim_matches('"').to_owned()).collect::<Vec<_>>().join(".")
                        })
                        .unwrap_or_default();
                    let message = fields.get("msg").and_then(Value::as_str).unwrap_or_default();
                    format!("{place}: {message}")
                }
                _ => String::new(),
            })
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(": "),
        _ => String::new(),
    };
    let text = text.replace(['\n', '\r'], " ");
    if text.chars().count() > 300 { format!("{}…", text.chars().take(300).collect::<String>()) } else { text }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn speaks_0_90_and_later_0_x() {
        assert!(check_version("u", "0.98.0").is_ok());
        assert!(check_version("u", "0.90.1").is_ok());
        assert!(matches!(check_version("u", "0.85.0"), Err(ZenmlError::VersionUnsupported { .. })));
        assert!(matches!(check_version("u", "1.0.0"), Err(ZenmlError::VersionUnsupported { .. })));
        assert!(matches!(check_version("u", ""), Err(ZenmlError::VersionUnsupported { .. })));
    }

    #[test]
    fn error_text_leaves_out_what_a_request_held() {
        let zenml = json!({"detail": ["EntityExistsError", "A secret named x exists"]});
        assert_eq!(error_detail(&zenml), "EntityExistsError: A secret named x exists");
        assert_eq!(error_name(&zenml), "EntityExistsError");
        let fastapi = json!({"detail": [{"loc": ["body", "values", 0], "msg": "Input should be a valid string", "input": "SECRETVALUE"}]});
        let text = error_detail(&fastapi);
        assert_eq!(text, "body.values.0: Input should be a valid string");
        assert!(!text.contains("SECRETVALUE"));
        assert_eq!(error_detail(&json!({"detail": "x".repeat(400)})).chars().count(), 301);
    }

    #[tokio::test]
    async fn a_server_with_its_share_of_the_workers_waiting_gets_no_more_requests() {
        use crate::bulkhead::{Pool, within};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        // It accepts, and never answers.
        let accepting = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        let sessions = Arc::new(Sessions::default());
        let pool = Pool::new(2);
        let waiting = tokio::spawn(within(pool.clone(), {
            let (sessions, url) = (sessions.clone(), url.clone());
            async move { sessions.server(&url, "key").await.map(|_| ()) }
        }));
        tokio::time::sleep(Duration::from_millis(200)).await;
        let refused = tokio::time::timeout(Duration::from_secs(2), within(pool, sessions.server(&url, "key")))
            .await
            .expect("refused at once")
            .err()
            .expect("no place for a second request");
        let ZenmlError::Unreachable { url: named, why } = &refused else { panic!("{refused:?}") };
        assert_eq!(named, &url);
        assert!(why.contains("has not yet answered 1 of this operator's requests"), "{why}");
        waiting.abort();
        accepting.abort();
    }

    #[test]
    fn one_login_per_server_and_key() {
        assert_ne!(key_digest("https://a", "k1"), key_digest("https://a", "k2"));
        assert_ne!(key_digest("https://a", "k"), key_digest("https://b", "k"));
        assert_eq!(base_of("https://zenml.example.com/"), "https://zenml.example.com");
    }
}
