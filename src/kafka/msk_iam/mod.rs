//! `kafka.auth = "msk_iam"`: Amazon MSK's IAM access control (SASL OAUTHBEARER carrying a
//! SigV4-presigned token, see `token`). Credentials come from the AWS default chain
//! (environment, shared profile, web identity / EKS service accounts, SSO, ECS and EC2
//! instance metadata), optionally through an assumed role, and are asked for again at
//! every token, so rotated or refreshed credentials are picked up by the next one.
//!
//! librdkafka asks for a token when a client starts and again at 80 % of the last one's
//! life (its OAUTHBEARER refresh event, answered by every docrepl client context through
//! `oauth_token`); the clients whose events nobody serves get theirs from
//! `keep_token_fresh`.
//!
//! The AWS SDK is async and its HTTP clients belong to the runtime they were made on,
//! while librdkafka asks from its own threads, some of them tokio's: the credentials are
//! fetched by one thread with its own runtime (`serve_credentials`), which the callers
//! ask and wait for. One per process, started by `install` before any client.

pub mod token;

use std::sync::{mpsc, Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_credential_types::Credentials;

use super::KafkaConfig;

/// How long a start waits for the first credentials (instance metadata can be slow).
const FIRST_CREDENTIALS_WITHIN: Duration = Duration::from_secs(20);
/// How long a token refresh waits for credentials before librdkafka is told it failed
/// (it asks again 10 s later).
const CREDENTIALS_WITHIN: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, thiserror::Error)]
pub enum MskIamError {
    #[error("kafka.auth = \"msk_iam\": kafka.aws_region is not set, the bootstrap servers are not MSK broker names, and the AWS default region chain (AWS_REGION, the profile's region) has none: set kafka.aws_region to the cluster's region")]
    NoRegion,
    #[error("kafka.auth = \"msk_iam\": no AWS credentials found ({0}): give the process an IAM identity (an EC2 instance profile, an ECS task role, an EKS service account's web identity) or set AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")]
    NoCredentials(String),
    #[error("kafka.auth = \"msk_iam\": cannot get AWS credentials{role}: {message}")]
    Credentials { role: String, message: String },
    #[error("kafka.auth = \"msk_iam\": {0}")]
    Sign(String),
}

/// The process's MSK IAM token source.
pub struct MskIam {
    region: String,
    role: Option<String>,
    requests: tokio::sync::mpsc::UnboundedSender<Reply>,
}

static INSTALLED: OnceLock<Arc<MskIam>> = OnceLock::new();

/// Starts the token source when `kafka.auth = "msk_iam"` and checks that credentials can
/// be had, so a missing identity or region stops the start with one line. Does nothing
/// otherwise, or when one is installed already.
pub fn install(kafka: &KafkaConfig) -> Result<(), MskIamError> {
    if kafka.auth != super::KafkaAuth::MskIam || INSTALLED.get().is_some() {
        return Ok(());
    }
    let iam = MskIam::start(kafka)?;
    iam.credentials(FIRST_CREDENTIALS_WITHIN)?;
    tracing::info!(region = %iam.region, role = iam.role.as_deref().unwrap_or("-"), "Kafka: MSK IAM authentication, credentials from the AWS default chain");
    let _ = INSTALLED.set(Arc::new(iam));
    Ok(())
}

/// The answer to librdkafka's OAUTHBEARER refresh, for every docrepl client context.
pub fn oauth_token() -> Result<rdkafka::client::OAuthToken, Box<dyn std::error::Error>> {
    let iam = INSTALLED.get().ok_or("sasl.mechanism OAUTHBEARER needs kafka.auth = \"msk_iam\" (docrepl has no other token source)")?;
    let token = iam.token()?;
    Ok(rdkafka::client::OAuthToken { token: token.value, principal_name: token::PRINCIPAL.into(), lifetime_ms: epoch_ms(token.expires_at) })
}

/// The region tokens are signed for, once installed (for messages).
pub fn installed_region() -> Option<String> {
    INSTALLED.get().map(|i| i.region.clone())
}

impl MskIam {
    fn start(kafka: &KafkaConfig) -> Result<MskIam, MskIamError> {
        let configured = kafka.aws_region.clone().or_else(|| token::region_of_brokers(&kafka.bootstrap_servers).ok().flatten());
        let role = kafka.aws_role_arn.clone();
        let session = kafka.aws_role_session_name.clone().unwrap_or_else(|| "docrepl".into());
        let (requests, queue) = tokio::sync::mpsc::unbounded_channel();
        let (ready, region) = mpsc::sync_channel(1);
        let thread_role = role.clone();
        std::thread::Builder::new()
            .name("aws-credentials".into())
            .spawn(move || match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime.block_on(serve_credentials(configured, thread_role, session, ready, queue)),
                Err(_) => drop(ready.send(None)),
            })
            .map_err(|e| MskIamError::Credentials { role: String::new(), message: format!("cannot start the credentials thread: {e}") })?;
        let region = region.recv_timeout(FIRST_CREDENTIALS_WITHIN).ok().flatten().ok_or(MskIamError::NoRegion)?;
        if !token::looks_like_region(&region) {
            return Err(MskIamError::Sign(format!("{region:?} (from the AWS default region chain) is not an AWS region name: set kafka.aws_region")));
        }
        Ok(MskIam { region, role, requests })
    }

    /// Credentials as the chain gives them now, within `within`.
    fn credentials(&self, within: Duration) -> Result<Credentials, MskIamError> {
        let (reply, answer) = mpsc::sync_channel(1);
        let gone = || MskIamError::Credentials { role: String::new(), message: "the credentials thread stopped".into() };
        self.requests.send(reply).map_err(|_| gone())?;
        match answer.recv_timeout(within) {
            Ok(result) => result,
            Err(mpsc::RecvTimeoutError::Timeout) => Err(MskIamError::Credentials {
                role: self.role_text(),
                message: format!("no answer within {} s (instance metadata or STS unreachable?)", within.as_secs()),
            }),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(gone()),
        }
    }

    fn role_text(&self) -> String {
        self.role.as_deref().map(|r| format!(" for role {r}")).unwrap_or_default()
    }

    /// A token signed now with fresh credentials.
    pub fn token(&self) -> Result<token::Token, MskIamError> {
        let credentials = self.credentials(CREDENTIALS_WITHIN)?;
        let user_agent = concat!("docrepl/", env!("CARGO_PKG_VERSION"));
        token::sign(&self.region, &credentials, SystemTime::now(), user_agent).map_err(|e| MskIamError::Sign(e.to_string()))
    }
}

/// A request for credentials: where to send them.
type Reply = mpsc::SyncSender<Result<Credentials, MskIamError>>;

/// The credentials thread: loads the AWS configuration (region `configured`, else the
/// chain's), tells `ready` the region, then answers each request with the chain's (or the
/// assumed role's) credentials of the moment.
async fn serve_credentials(
    configured: Option<String>,
    role: Option<String>,
    session: String,
    ready: mpsc::SyncSender<Option<String>>,
    mut queue: tokio::sync::mpsc::UnboundedReceiver<Reply>,
) {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(region) = configured {
        loader = loader.region(aws_config::Region::new(region));
    }
    let sdk = loader.load().await;
    let provider = match (&role, sdk.credentials_provider()) {
        (Some(arn), Some(_)) => Some(SharedCredentialsProvider::new(
            aws_config::sts::AssumeRoleProvider::builder(arn.clone()).session_name(session).configure(&sdk).build().await,
        )),
        (None, provider) => provider,
        (Some(_), None) => None,
    };
    let _ = ready.send(sdk.region().map(|r| r.to_string()));
    while let Some(reply) = queue.recv().await {
        let answer = match &provider {
            Some(p) => p.provide_credentials().await.map_err(|e| describe(&e, role.as_deref())),
            None => Err(MskIamError::NoCredentials("no credential provider".into())),
        };
        let _ = reply.send(answer);
    }
}

/// One line from the SDK's error and its causes. Credentials never appear in them.
fn describe(error: &aws_credential_types::provider::error::CredentialsError, role: Option<&str>) -> MskIamError {
    use aws_credential_types::provider::error::CredentialsError;
    let mut message = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(c) = cause {
        message.push_str(": ");
        message.push_str(&c.to_string());
        cause = c.source();
    }
    match (error, role) {
        (CredentialsError::CredentialsNotLoaded(_), None) => MskIamError::NoCredentials(message),
        _ => MskIamError::Credentials { role: role.map(|r| format!(" for role {r}")).unwrap_or_default(), message },
    }
}

fn epoch_ms(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// A client that docrepl hands tokens to itself, as no one serves its refresh events:
/// the admin client (rdkafka polls only its admin queue) and consumers used for requests
/// (they are polled only when they read a message).
pub trait TokenHolder: Send + Sync + 'static {
    type Context: rdkafka::ClientContext;
    fn token_client(&self) -> &rdkafka::client::Client<Self::Context>;
}

impl<C: rdkafka::ClientContext + 'static> TokenHolder for rdkafka::admin::AdminClient<C> {
    type Context = C;
    fn token_client(&self) -> &rdkafka::client::Client<C> {
        self.inner()
    }
}

impl<C: rdkafka::consumer::ConsumerContext + 'static> TokenHolder for rdkafka::consumer::BaseConsumer<C> {
    type Context = C;
    fn token_client(&self) -> &rdkafka::client::Client<C> {
        rdkafka::consumer::Consumer::client(self)
    }
}

/// With `msk_iam`: gives `holder` a token now, and a fresh one at half the last one's
/// life, from a thread that ends when the client is dropped. Does nothing otherwise.
pub fn keep_token_fresh<T: TokenHolder>(holder: &Arc<T>) {
    if INSTALLED.get().is_none() {
        return;
    }
    let mut renew_at = None;
    renew(&mut renew_at, holder.token_client());
    let holder = Arc::downgrade(holder);
    let spawned = std::thread::Builder::new().name("kafka-token".into()).spawn(move || {
        while let Some(client) = holder.upgrade() {
            renew(&mut renew_at, client.token_client());
            drop(client);
            std::thread::sleep(Duration::from_secs(1));
        }
    });
    if let Err(e) = spawned {
        tracing::warn!("cannot start the thread that renews a Kafka client's MSK IAM token: {e}");
    }
}

/// Sets a token when none was set or the last is past half its life.
fn renew<C: rdkafka::ClientContext>(renew_at: &mut Option<Instant>, client: &rdkafka::client::Client<C>) {
    let Some(iam) = INSTALLED.get() else { return };
    if renew_at.is_some_and(|at| Instant::now() < at) {
        return;
    }
    match iam.token() {
        Ok(token) => {
            let life = token.expires_at.duration_since(SystemTime::now()).unwrap_or_default();
            match set_token(client, &token) {
                Ok(()) => *renew_at = Some(Instant::now() + life / 2),
                Err(e) => tracing::warn!("cannot give a Kafka client its MSK IAM token: {e}"),
            }
        }
        // Again in a second.
        Err(e) => tracing::warn!("{e}"),
    }
}

/// Hands `token` to a client's SASL OAUTHBEARER state (what rdkafka does with the token a
/// context returns, for a client whose refresh event nobody serves).
fn set_token<C: rdkafka::ClientContext>(client: &rdkafka::client::Client<C>, token: &token::Token) -> Result<(), String> {
    use std::ffi::CString;
    let value = CString::new(token.value.as_str()).map_err(|e| e.to_string())?;
    let principal = CString::new(token::PRINCIPAL).map_err(|e| e.to_string())?;
    let mut error = [0 as std::ffi::c_char; 512];
    // SAFETY: the client pointer is alive for the borrow; the strings outlive the call,
    // which copies them; no extensions (null, 0); the error buffer's size is passed.
    let code = unsafe {
        rdkafka::bindings::rd_kafka_oauthbearer_set_token(
            client.native_ptr(),
            value.as_ptr(),
            epoch_ms(token.expires_at),
            principal.as_ptr(),
            std::ptr::null_mut(),
            0,
            error.as_mut_ptr(),
            error.len(),
        )
    };
    if code == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
        Ok(())
    } else {
        // SAFETY: librdkafka wrote a NUL-terminated message into the buffer.
        Err(unsafe { std::ffi::CStr::from_ptr(error.as_ptr()) }.to_string_lossy().into_owned())
    }
}
