//! `artifact-operator check`: run inside a workload pod, with a Stack's ConfigMap as its
//! environment and files and as the pod's ServiceAccount, it proves that this identity can use the
//! store: it writes, reads back, lists and deletes one object under the prefix, with the pod's own
//! AWS credential chain (keys from the environment, IRSA's web identity, Pod Identity...), and says
//! so one line per step. On failure it names the step and the reason, writes them to the result
//! file (Kubernetes' termination message, which the operator reads back from the pod's status)
//! and exits non-zero. It never prints a credential.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_config::BehaviorVersion;
use aws_credential_types::provider::ProvideCredentials;
use aws_sdk_s3::config::Region;
use aws_sdk_s3::primitives::ByteStream;
use aws_smithy_types::retry::RetryConfig;
use aws_smithy_types::timeout::TimeoutConfig;
use serde::{Deserialize, Serialize};

use crate::aws::clients::{ConnectError, https_client_trusting};
use crate::aws::failure::{CallError, Target, classify_s3, source_chain};
use crate::reason::{Failure, Reason};
use crate::render::env::{ADDRESSING_STYLE, parse_addressing_style};
use crate::resolve::{DEFAULT_REGION, endpoint_shown, endpoint_url, path_style};
use crate::s3path::S3Path;

/// The directory under the prefix where the check's object lives while it runs.
pub const CHECK_DIRECTORY: &str = ".artifact-operator-check";
/// Exit code of a check that failed at a step (2 is clap's for bad arguments).
pub const EXIT_FAILED: u8 = 1;

/// The arguments. Each falls back to the environment variable the Stack's ConfigMap sets (a flag
/// wins); an empty variable counts as unset, as it would for the AWS SDKs.
#[derive(clap::Args, Debug, Default)]
pub struct CheckArgs {
    /// The store's path, s3://bucket/prefix [env: ARTIFACT_STORE_PATH].
    #[arg(long)]
    pub path: Option<String>,
    /// The bucket's region [env: AWS_REGION].
    #[arg(long)]
    pub region: Option<String>,
    /// A custom S3 endpoint, for S3-compatible services [env: AWS_ENDPOINT_URL_S3].
    #[arg(long)]
    pub endpoint: Option<String>,
    /// Where the custom endpoint wants the bucket: auto, path or virtual
    /// [env: ARTIFACT_STORE_ADDRESSING_STYLE].
    #[arg(long)]
    pub addressing_style: Option<String>,
    /// A PEM file of CA certificates to trust besides the system's; the Stack's ConfigMap mounted
    /// at /etc/artifact-store holds it as ca-bundle.pem [env: AWS_CA_BUNDLE].
    #[arg(long)]
    pub ca_bundle: Option<PathBuf>,
    /// Where to write the outcome as one JSON line; Kubernetes shows this file's content as the
    /// container's termination message. Skipped when its directory does not exist
    /// [env: ARTIFACT_STORE_CHECK_RESULT; default: /dev/termination-log].
    #[arg(long)]
    pub result_file: Option<PathBuf>,
}

impl CheckArgs {
    /// Fills what no flag gave from `env` (empty values count as unset). Pure.
    pub fn with_env(self, env: impl Fn(&str) -> Option<String>) -> Self {
        let var = |name: &str| env(name).filter(|value| !value.trim().is_empty());
        Self {
            path: self.path.or_else(|| var("ARTIFACT_STORE_PATH")),
            region: self.region.or_else(|| var("AWS_REGION")).or_else(|| var("AWS_DEFAULT_REGION")),
            endpoint: self.endpoint.or_else(|| var("AWS_ENDPOINT_URL_S3")).or_else(|| var("AWS_ENDPOINT_URL")),
            addressing_style: self.addressing_style.or_else(|| var(ADDRESSING_STYLE)),
            ca_bundle: self.ca_bundle.or_else(|| var("AWS_CA_BUNDLE").map(PathBuf::from)),
            result_file: self
                .result_file
                .or_else(|| var("ARTIFACT_STORE_CHECK_RESULT").map(PathBuf::from))
                .or_else(|| Some(PathBuf::from("/dev/termination-log"))),
        }
    }
}

/// The steps of a check, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Step {
    Configuration,
    Credentials,
    Write,
    Read,
    List,
    Delete,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Configuration => "configuration",
            Self::Credentials => "credentials",
            Self::Write => "write",
            Self::Read => "read",
            Self::List => "list",
            Self::Delete => "delete",
        }
    }
}

/// What a check found, as it writes it to the result file and the operator reads it back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// The failing step; None when every step passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<Step>,
    /// The reason: `Verified`, or why the step failed.
    pub reason: String,
    pub message: String,
}

impl Outcome {
    fn passed(message: String) -> Self {
        Self { step: None, reason: Reason::Verified.as_str().to_owned(), message }
    }

    fn failed(step: Step, failure: Failure) -> Self {
        Self { step: Some(step), reason: failure.reason.as_str().to_owned(), message: one_line(&failure.message) }
    }

    /// The outcome a check wrote, from a container's termination message.
    pub fn parse(message: &str) -> Option<Self> {
        serde_json::from_str(message.trim()).ok()
    }
}

/// What the check will talk to, validated before any library sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub path: S3Path,
    pub region: String,
    pub endpoint: Option<String>,
    pub path_style: bool,
}

/// Validates the arguments. Pure.
pub fn plan(args: &CheckArgs) -> Result<Plan, Failure> {
    let path = args.path.as_deref().ok_or_else(|| {
        Failure::new(
            Reason::InvalidPath,
            "no store path: give --path or ARTIFACT_STORE_PATH, e.g. with envFrom the Stack's ConfigMap",
        )
    })?;
    let path = S3Path::parse(path)
        .map_err(|e| Failure::new(Reason::InvalidPath, format!("ARTIFACT_STORE_PATH {path:?}: {e}")))?;
    let endpoint = args.endpoint.as_deref().map(str::trim).filter(|e| !e.is_empty());
    if let Some(url) = endpoint
        && !(url.starts_with("https://") || url.starts_with("http://"))
    {
        return Err(Failure::new(
            Reason::S3Error,
            format!(
                "AWS_ENDPOINT_URL_S3 {url:?} is not an http:// or https:// URL; mount the Stack's ConfigMap with envFrom"
            ),
        ));
    }
    let style = match args.addressing_style.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(value) => Some(parse_addressing_style(value).ok_or_else(|| {
            Failure::new(Reason::S3Error, format!("{ADDRESSING_STYLE} {value:?} is not auto, path or virtual"))
        })?),
    };
    let region = args.region.as_deref().filter(|r| !r.is_empty()).unwrap_or(DEFAULT_REGION).to_owned();
    Ok(Plan {
        path,
        region,
        endpoint: endpoint.map(endpoint_url),
        path_style: path_style(endpoint.map(|_| style.unwrap_or_default())),
    })
}

/// Which link of the default credential chain the environment points at, for the log. Pure.
pub fn credential_source(env: impl Fn(&str) -> Option<String>) -> &'static str {
    let set = |name: &str| env(name).is_some_and(|v| !v.is_empty());
    if set("AWS_ACCESS_KEY_ID") {
        "access keys from the environment (AWS_ACCESS_KEY_ID)"
    } else if set("AWS_WEB_IDENTITY_TOKEN_FILE") && set("AWS_ROLE_ARN") {
        "the ServiceAccount's web identity token (IRSA, AWS_ROLE_ARN)"
    } else if set("AWS_CONTAINER_CREDENTIALS_FULL_URI") {
        "the container credentials endpoint (EKS Pod Identity)"
    } else {
        "the default chain (profile, instance role)"
    }
}

/// Access keys in the environment of a pod that also has a web identity (IRSA's AWS_ROLE_ARN and
/// AWS_WEB_IDENTITY_TOKEN_FILE): every SDK takes the keys first and never assumes the role, so the
/// pod works as another identity, or not at all, whatever the role allows (deployKF #79).
pub fn shadowed_web_identity(env: impl Fn(&str) -> Option<String>) -> Option<Failure> {
    let set = |name: &str| env(name).is_some_and(|v| !v.is_empty());
    if !(set("AWS_ACCESS_KEY_ID") && set("AWS_WEB_IDENTITY_TOKEN_FILE") && set("AWS_ROLE_ARN")) {
        return None;
    }
    let role = env("AWS_ROLE_ARN").unwrap_or_default();
    Some(Failure::new(
        Reason::WebIdentityShadowed,
        format!(
            "the pod has AWS_ACCESS_KEY_ID in its environment besides the ServiceAccount's web identity token (role {role}): the SDKs use the keys and never assume the role; remove AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY from the pod (a preset env, a webhook or an envFrom Secret sets them)"
        ),
    ))
}

/// Runs the check, printing one line per step; the exit code says whether access is proven.
pub async fn run(args: CheckArgs) -> ExitCode {
    let args = args.with_env(|name| std::env::var(name).ok());
    let outcome = check(&args).await;
    match &outcome.step {
        None => println!("ok: {}", outcome.message),
        Some(step) => println!("FAILED at {} ({})", step.as_str(), outcome.reason),
    }
    if let Some(file) = &args.result_file {
        write_result(file, &outcome);
    }
    if outcome.step.is_none() { ExitCode::SUCCESS } else { ExitCode::from(EXIT_FAILED) }
}

fn write_result(file: &std::path::Path, outcome: &Outcome) {
    if file.parent().is_some_and(|dir| dir.is_dir()) {
        let line = serde_json::to_string(outcome).expect("the outcome serializes");
        if let Err(error) = std::fs::write(file, line) {
            eprintln!("could not write the result to {}: {error}", file.display());
        }
    }
}

/// Prints the step's line and passes its result on.
fn report<T>(step: Step, what: &str, result: Result<T, Failure>) -> Result<T, Outcome> {
    match result {
        Ok(value) => {
            println!("{} {what}: ok", step.as_str());
            Ok(value)
        }
        Err(failure) => {
            let outcome = Outcome::failed(step, failure);
            println!("{} {what}: {} {}", step.as_str(), outcome.reason, outcome.message);
            Err(outcome)
        }
    }
}

async fn check(args: &CheckArgs) -> Outcome {
    match steps(args).await {
        Ok(outcome) | Err(outcome) => outcome,
    }
}

async fn steps(args: &CheckArgs) -> Result<Outcome, Outcome> {
    let plan = report(Step::Configuration, "of the store", plan(args))?;
    let endpoint_display = endpoint_shown(plan.endpoint.as_deref(), &plan.region);
    println!(
        "store {} in {} at {endpoint_display} ({}-style)",
        plan.path,
        plan.region,
        if plan.path_style { "path" } else { "virtual-host" }
    );
    let ca_pem = match &args.ca_bundle {
        None => None,
        Some(file) => Some(report(Step::Configuration, "of the CA bundle", read_ca_bundle(file))?),
    };
    let sdk = sdk_config(&plan.region).await;
    let source = credentials(&sdk).await?;
    let client = s3_client(&sdk, &plan, ca_pem.as_deref(), args)?;
    let trip = RoundTrip::new(&client, &plan, &endpoint_display);
    report(Step::Write, &trip.uri, trip.write().await)?;
    // From here on the object exists: whatever fails, try to remove it before reporting.
    let verified = async {
        report(Step::Read, &trip.uri, trip.read().await)?;
        report(Step::List, &format!("s3://{}/{}", trip.bucket, trip.directory), trip.list().await)
    }
    .await;
    let deleted = report(Step::Delete, &trip.uri, trip.delete().await);
    verified?;
    deleted?;
    Ok(Outcome::passed(format!("{source} can write, read, list and delete under {} at {endpoint_display}", plan.path)))
}

/// The SDK's configuration from the pod's environment, in the store's region.
async fn sdk_config(region: &str) -> aws_config::SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(region.to_owned()))
        .retry_config(RetryConfig::standard().with_max_attempts(3))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .operation_timeout(Duration::from_secs(30))
                .build(),
        )
        .load()
        .await
}

/// The credentials step: the pod's chain gives credentials, and no access keys shadow its web
/// identity. Returns where they come from, for the log.
async fn credentials(sdk: &aws_config::SdkConfig) -> Result<&'static str, Outcome> {
    let source = credential_source(|name| std::env::var(name).ok());
    if let Some(failure) = shadowed_web_identity(|name| std::env::var(name).ok()) {
        report(Step::Credentials, &format!("from {source}"), Err::<(), _>(failure))?;
    }
    let provider = sdk.credentials_provider();
    report(
        Step::Credentials,
        &format!("from {source}"),
        async {
            let provider = provider.ok_or_else(|| no_credentials("no credential provider is configured".to_owned()))?;
            provider.provide_credentials().await.map(|_| ()).map_err(|e| no_credentials(source_chain(&e)))
        }
        .await,
    )?;
    Ok(source)
}

/// An S3 client for the plan's endpoint and addressing, trusting `ca_pem` when given.
fn s3_client(
    sdk: &aws_config::SdkConfig,
    plan: &Plan,
    ca_pem: Option<&str>,
    args: &CheckArgs,
) -> Result<aws_sdk_s3::Client, Outcome> {
    let mut config = aws_sdk_s3::config::Builder::from(sdk).force_path_style(plan.path_style);
    if let Some(url) = &plan.endpoint {
        config = config.endpoint_url(url);
    }
    if let Some(pem) = ca_pem {
        let http = https_client_trusting(pem).map_err(|ConnectError::InvalidCaBundle| {
            Outcome::failed(Step::Configuration, invalid_ca_bundle(args.ca_bundle.as_ref()))
        })?;
        config = config.http_client(http);
    }
    Ok(aws_sdk_s3::Client::from_conf(config.build()))
}

/// The object the check writes, reads back, lists and deletes under the store's prefix.
struct RoundTrip<'a> {
    client: &'a aws_sdk_s3::Client,
    region: &'a str,
    endpoint: &'a str,
    bucket: &'a str,
    directory: String,
    key: String,
    uri: String,
    body: String,
}

impl<'a> RoundTrip<'a> {
    fn new(client: &'a aws_sdk_s3::Client, plan: &'a Plan, endpoint: &'a str) -> Self {
        let key = plan.path.key(&format!("{CHECK_DIRECTORY}/{}", object_name()));
        Self {
            client,
            region: &plan.region,
            endpoint,
            bucket: plan.path.bucket.as_str(),
            directory: plan.path.key(&format!("{CHECK_DIRECTORY}/")),
            uri: format!("s3://{}/{key}", plan.path.bucket),
            key,
            body: format!("artifact-operator check {}\n", object_name()),
        }
    }

    fn fail(&self, action: &str, error: CallError) -> Failure {
        let target = Target { action, bucket: self.bucket, region: self.region, endpoint: self.endpoint };
        classify_s3(&error, &target)
    }

    async fn write(&self) -> Result<(), Failure> {
        let body = ByteStream::from(self.body.clone().into_bytes());
        let write = self.client.put_object().bucket(self.bucket).key(&self.key).body(body).send();
        write.await.map(|_| ()).map_err(|e| self.fail(&format!("write {}", self.uri), CallError::from_sdk(&e)))
    }

    async fn read(&self) -> Result<(), Failure> {
        let uri = &self.uri;
        let output = self.client.get_object().bucket(self.bucket).key(&self.key).send().await;
        let output = output.map_err(|e| self.fail(&format!("read {uri}"), CallError::from_sdk(&e)))?;
        let bytes = output.body.collect().await.map_err(|e| {
            self.fail(&format!("read {uri}"), CallError { dispatch: Some(e.to_string()), ..CallError::default() })
        })?;
        if bytes.into_bytes().as_ref() == self.body.as_bytes() {
            Ok(())
        } else {
            Err(Failure::new(
                Reason::S3Error,
                format!("{uri} read back with other content than was written; check what rewrites objects on the way"),
            ))
        }
    }

    async fn list(&self) -> Result<(), Failure> {
        let (bucket, directory) = (self.bucket, &self.directory);
        let output = self.client.list_objects_v2().bucket(bucket).prefix(directory).send().await;
        let output =
            output.map_err(|e| self.fail(&format!("list s3://{bucket}/{directory}"), CallError::from_sdk(&e)))?;
        if output.contents().iter().any(|object| object.key() == Some(self.key.as_str())) {
            Ok(())
        } else {
            Err(Failure::new(
                Reason::S3Error,
                format!(
                    "listing s3://{bucket}/{directory} does not show the object just written; the endpoint lists inconsistently"
                ),
            ))
        }
    }

    async fn delete(&self) -> Result<(), Failure> {
        let delete = self.client.delete_object().bucket(self.bucket).key(&self.key).send().await;
        delete.map(|_| ()).map_err(|e| self.fail(&format!("delete {}", self.uri), CallError::from_sdk(&e)))
    }
}

fn no_credentials(cause: String) -> Failure {
    Failure::new(
        Reason::NoCredentials,
        format!(
            "the pod's AWS credential chain gave no credentials ({cause}); with keys, add the store's credentials Secret to envFrom; with IRSA, run the pod as a ServiceAccount annotated with eks.amazonaws.com/role-arn"
        ),
    )
}

fn invalid_ca_bundle(file: Option<&PathBuf>) -> Failure {
    let file = file.map(|f| f.display().to_string()).unwrap_or_default();
    Failure::new(Reason::CaBundleInvalid, format!("{file} holds no usable PEM certificate"))
}

fn read_ca_bundle(file: &PathBuf) -> Result<String, Failure> {
    let pem = std::fs::read_to_string(file).map_err(|e| {
        Failure::new(
            Reason::CaBundleNotFound,
            format!(
                "AWS_CA_BUNDLE names {} but it cannot be read ({e}); mount the Stack's ConfigMap as a volume at /etc/artifact-store",
                file.display()
            ),
        )
    })?;
    if pem.contains("-----BEGIN CERTIFICATE-----") { Ok(pem) } else { Err(invalid_ca_bundle(Some(file))) }
}

/// A name no other check running at the same time uses: the pod's host name, the process id and
/// the time.
fn object_name() -> String {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        let host = std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()).unwrap_or_else(|| "check".to_owned());
        let host: String = host.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.').collect();
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
        format!("{host}-{}-{nanos}", std::process::id())
    })
    .clone()
}

/// A message on one line (a condition's message, a log line): the SDK lists a chain's attempts
/// on lines of their own.
fn one_line(message: &str) -> String {
    message.split('\n').map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(path: &str, endpoint: Option<&str>, style: Option<&str>) -> CheckArgs {
        CheckArgs {
            path: Some(path.to_owned()),
            endpoint: endpoint.map(str::to_owned),
            addressing_style: style.map(str::to_owned),
            ..CheckArgs::default()
        }
    }

    #[test]
    fn flags_win_over_the_environment_and_empty_variables_count_as_unset() {
        let env = |name: &str| match name {
            "ARTIFACT_STORE_PATH" => Some("s3://from-env/p".to_owned()),
            "AWS_REGION" => Some(String::new()),
            "AWS_DEFAULT_REGION" => Some("eu-west-1".to_owned()),
            "AWS_CA_BUNDLE" => Some(" ".to_owned()),
            _ => None,
        };
        let args = CheckArgs { path: Some("s3://from-flag".to_owned()), ..CheckArgs::default() }.with_env(env);
        assert_eq!(args.path.as_deref(), Some("s3://from-flag"));
        assert_eq!(args.region.as_deref(), Some("eu-west-1"));
        assert_eq!(args.ca_bundle, None);
        assert_eq!(args.result_file, Some(PathBuf::from("/dev/termination-log")));
        assert_eq!(CheckArgs::default().with_env(env).path.as_deref(), Some("s3://from-env/p"));
        assert_eq!(plan(&CheckArgs::default()).unwrap_err().reason, Reason::InvalidPath);
    }

    #[test]
    fn plans_like_the_operator_resolves() {
        let plan = plan(&args("s3://bucket/team/a", Some("http://10.0.0.1:9000/"), Some("auto"))).unwrap();
        assert_eq!(plan.path, S3Path { bucket: "bucket".into(), prefix: "team/a".into() });
        assert_eq!(
            (plan.region.as_str(), plan.endpoint.as_deref(), plan.path_style),
            (DEFAULT_REGION, Some("http://10.0.0.1:9000"), true)
        );
        assert!(!super::plan(&args("s3://bucket", Some("https://s3.example"), Some("virtual"))).unwrap().path_style);
        assert!(!super::plan(&args("s3://bucket", None, None)).unwrap().path_style);
    }

    #[test]
    fn refuses_what_would_reach_the_sdk_broken() {
        for (case, reason) in [
            (args("bucket/prefix", None, None), Reason::InvalidPath),
            (args("s3://bucket", Some("minio:9000"), None), Reason::S3Error),
            (args("s3://bucket", Some("http://minio:9000"), Some("sideways")), Reason::S3Error),
        ] {
            assert_eq!(plan(&case).unwrap_err().reason, reason, "{case:?}");
        }
    }

    #[test]
    fn outcome_round_trips_through_the_termination_message() {
        let failed = Outcome::failed(Step::Write, Failure::new(Reason::AccessDenied, "denied"));
        let line = serde_json::to_string(&failed).unwrap();
        assert_eq!(line, r#"{"step":"write","reason":"AccessDenied","message":"denied"}"#);
        assert_eq!(Outcome::parse(&format!("{line}\n")), Some(failed));
        assert_eq!(Outcome::parse("container killed"), None);
    }

    #[test]
    fn names_the_credential_source_without_its_value() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned())
        };
        let keys = credential_source(env(&[("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")]));
        assert!(keys.contains("environment") && !keys.contains("AKIAEXAMPLE"));
        assert!(
            credential_source(env(&[("AWS_WEB_IDENTITY_TOKEN_FILE", "/t"), ("AWS_ROLE_ARN", "arn")])).contains("IRSA")
        );
        assert!(credential_source(env(&[])).contains("default chain"));
    }

    #[test]
    fn access_keys_beside_a_web_identity_are_refused() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned())
        };
        let irsa = env(&[("AWS_WEB_IDENTITY_TOKEN_FILE", "/t"), ("AWS_ROLE_ARN", "arn:aws:iam::1:role/r")]);
        assert_eq!(shadowed_web_identity(irsa), None);
        assert_eq!(shadowed_web_identity(env(&[("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")])), None, "keys alone are fine");
        let both = env(&[
            ("AWS_WEB_IDENTITY_TOKEN_FILE", "/t"),
            ("AWS_ROLE_ARN", "arn:aws:iam::1:role/r"),
            ("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE"),
        ]);
        let failure = shadowed_web_identity(both).unwrap();
        assert_eq!(failure.reason, Reason::WebIdentityShadowed);
        assert!(failure.message.contains("AWS_ACCESS_KEY_ID") && failure.message.contains("arn:aws:iam::1:role/r"));
        assert!(!failure.message.contains("AKIAEXAMPLE"), "the key's value is not said");
    }
}
