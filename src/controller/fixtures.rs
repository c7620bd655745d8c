//! Reconcile-level tests without an apiserver: a [`Context`] whose client talks to a mock, and an
//! [`ApiServerVerifier`] that checks each request the reconcile makes, in order, and answers it
//! (controller-rs's pattern, on `tower-test`).

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response};
use kube::Client;
use kube::client::Body;
use serde_json::Value;

use super::Context;
use super::context::Settings;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// A Stack named `prod` in `namespace`, with `uid` and `spec` (JSON, as a user would write it).
pub fn stack(namespace: &str, uid: &str, spec: Value) -> crate::api::Stack {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "artifacts.dev/v1alpha1", "kind": "Stack",
        "metadata": {"name": "prod", "namespace": namespace, "uid": uid},
        "spec": spec,
    }))
    .expect("a valid Stack")
}

/// A context whose every Kubernetes call goes to the returned verifier; it makes no AWS call.
pub fn test_context() -> (Arc<Context>, ApiServerVerifier) {
    test_context_with_check_image(None)
}

/// [`test_context`] with `--check-image`.
pub fn test_context_with_check_image(check_image: Option<&str>) -> (Arc<Context>, ApiServerVerifier) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let settings = Settings {
        resync_interval: Duration::from_secs(300),
        oidc_issuer: Some("https://oidc.example.test".into()),
        check_image: check_image.map(str::to_owned),
        eks_cluster: None,
    };
    let ctx = Context::new(client, crate::aws::AwsEdge::offline(), settings, crate::metrics::Metrics::default());
    (Arc::new(ctx), ApiServerVerifier(handle))
}

pub struct ApiServerVerifier(Handle);

/// How long a request the test expects may take to come.
const WAIT: Duration = Duration::from_secs(5);

impl ApiServerVerifier {
    /// Takes the next request, checks its method and path, answers it with what `respond` makes of
    /// its body (status code, body), and returns that body (Null when empty) and the query.
    pub async fn handle(
        &mut self,
        method: Method,
        path: &str,
        respond: impl FnOnce(&Value) -> (u16, Value),
    ) -> (Value, String) {
        self.exchange(|m, p| assert_eq!((m, p), (&method, path)), respond).await
    }

    /// Answers an Event the reconcile publishes in `namespace` (created, or patched into the series
    /// of an earlier one with the same reason), and returns it.
    pub async fn event(&mut self, namespace: &str) -> Value {
        let events = format!("/apis/events.k8s.io/v1/namespaces/{namespace}/events");
        let check = |method: &Method, path: &str| {
            let created = method == Method::POST && path == events;
            let patched = method == Method::PATCH && path.starts_with(&format!("{events}/"));
            assert!(created || patched, "expected an Event, got {method} {path}");
        };
        self.exchange(check, |event| (201, event.clone())).await.0
    }

    async fn exchange(
        &mut self,
        check: impl FnOnce(&Method, &str),
        respond: impl FnOnce(&Value) -> (u16, Value),
    ) -> (Value, String) {
        let (request, send) = tokio::time::timeout(WAIT, self.0.next_request())
            .await
            .unwrap_or_else(|_| panic!("no request within {WAIT:?}"))
            .expect("the client is alive");
        check(request.method(), request.uri().path());
        let query = request.uri().query().unwrap_or_default().to_owned();
        let bytes = request.into_body().collect_bytes().await.expect("a request body");
        let body = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).expect("a JSON body") };
        let (status, answer) = respond(&body);
        let answer = serde_json::to_vec(&answer).expect("JSON serializes");
        send.send_response(Response::builder().status(status).body(Body::from(answer)).expect("a response"));
        (body, query)
    }

    /// Answers a GET of `path` with 404 Not Found.
    pub async fn not_found(&mut self, path: &str) {
        let status = serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
            "message": format!("{path} not found"),
        });
        self.handle(Method::GET, path, |_| (404, status)).await;
    }

    /// Fails if the reconcile makes any further request.
    pub async fn no_more_requests(&mut self) {
        if let Ok(Some((request, _))) = tokio::time::timeout(Duration::from_millis(200), self.0.next_request()).await {
            panic!("unexpected request {} {}", request.method(), request.uri());
        }
    }
}
