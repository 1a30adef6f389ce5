//! Refusals of docrepl itself by the Kafka cluster: credentials it does not accept, a
//! certificate docrepl does not trust, an ACL that is missing. They are settings to fix,
//! not outages to wait out, so the process stops with one line that says which (exit 2).
//! librdkafka reports the first two only through its error callback, never as the result
//! of a request (which fails as a transport failure or times out), so a client whose
//! request failed is asked, with `diagnose`, what the callback said.

use std::sync::Mutex;

use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;

/// The cluster refused docrepl: what and what to change. Never holds a secret (librdkafka
/// does not put passwords in its messages; the user name is not one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AccessRefused(pub String);

/// A client context that remembers the access refusal librdkafka reported last (through
/// its error callback, served by `poll`).
#[derive(Default)]
pub struct AccessWatch {
    user: Option<String>,
    /// The region of `kafka.auth = "msk_iam"` tokens, named in a refusal.
    iam_region: Option<String>,
    refused: Mutex<Option<AccessRefused>>,
}

impl AccessWatch {
    /// `user`: the SASL user name the client presents, named in the refusal.
    pub fn new(user: Option<String>, iam_region: Option<String>) -> Self {
        AccessWatch { user, iam_region, refused: Mutex::new(None) }
    }

    pub fn refused(&self) -> Option<AccessRefused> {
        self.refused.lock().ok().and_then(|r| r.clone())
    }
}

impl ClientContext for AccessWatch {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;
    fn generate_oauth_token(&self, _: Option<&str>) -> Result<rdkafka::client::OAuthToken, Box<dyn std::error::Error>> {
        crate::kafka::msk_iam::oauth_token()
    }
    fn error(&self, error: KafkaError, reason: &str) {
        if let Some(refusal) = refusal(error.rdkafka_error_code(), reason, self.user.as_deref(), self.iam_region.as_deref()) {
            if let Ok(mut r) = self.refused.lock() {
                *r = Some(refusal);
            }
        }
        tracing::error!("librdkafka: {error}: {reason}");
    }
}

/// The probe of `diagnose` sends nothing.
impl rdkafka::producer::ProducerContext for AccessWatch {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::producer::DeliveryResult<'_>, _: ()) {}
}

/// Why the cluster at `kafka` cannot be used, when it refuses docrepl: a short-lived client
/// asks for metadata and serves its error callbacks (an admin client's are never served)
/// for up to `within`. `None` when it answers or fails for another reason.
pub fn diagnose(kafka: &super::KafkaConfig, within: std::time::Duration) -> Option<AccessRefused> {
    use rdkafka::producer::{BaseProducer, Producer};
    let iam_region = (kafka.auth == super::KafkaAuth::MskIam).then(|| super::msk_iam::installed_region().unwrap_or_default());
    let watch = AccessWatch::new(kafka.properties.get("sasl.username").cloned(), iam_region);
    let probe: BaseProducer<AccessWatch> = super::base_client_config(kafka).create_with_context(watch).ok()?;
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if probe.client().fetch_metadata(None, std::time::Duration::from_millis(500)).is_ok() {
            return None;
        }
        probe.poll(std::time::Duration::from_millis(100));
        if let Some(refused) = probe.context().refused() {
            return Some(refused);
        }
    }
    None
}

/// What a librdkafka error means for the operator when it is an access refusal.
/// `iam_region`: set when docrepl presents MSK IAM tokens (signed for that region).
pub fn refusal(code: Option<RDKafkaErrorCode>, reason: &str, user: Option<&str>, iam_region: Option<&str>) -> Option<AccessRefused> {
    let who = user.map(|u| format!(" of user {u:?}")).unwrap_or_default();
    let text = match code {
        Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed) if iam_region.is_some() => format!(
            "the broker refused docrepl's MSK IAM token ({reason}): check that kafka.aws_region ({}) is the cluster's region, that the cluster has IAM access control on, and that the IAM identity may kafka-cluster:Connect (README, Running on AWS)",
            iam_region.unwrap_or_default()
        ),
        Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed) => format!(
            "the broker refused the SASL credentials{who} ({reason}): check kafka.properties \"sasl.username\" and \"sasl.password\" (or DOCREPL_KAFKA__PROPERTIES__SASL_PASSWORD) and \"sasl.mechanism\""
        ),
        Some(RDKafkaErrorCode::SSL) if reason.contains("certificate verify failed") => format!(
            "the broker's TLS certificate is not trusted ({reason}): set kafka.properties \"ssl.ca.location\" to the CA certificate that signed it"
        ),
        Some(RDKafkaErrorCode::SSL) => format!("the TLS handshake with the broker failed ({reason}): check kafka.properties \"security.protocol\" and \"ssl.*\""),
        Some(
            RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::GroupAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed
            | RDKafkaErrorCode::TransactionalIdAuthorizationFailed,
        ) => format!("the broker's ACLs do not allow this{who} ({reason}): grant the operations the README's ACL list names"),
        _ => return None,
    };
    Some(AccessRefused(text))
}

/// An ACL refusal in a request's own answer (topic, group or cluster authorization
/// failed), if it is one. Credentials and certificates are checked when the process starts
/// (`diagnose`); a SASL or TLS error later, on a reconnect, is left to the reconnect.
pub fn acl_refusal_of(error: &KafkaError, user: Option<&str>) -> Option<AccessRefused> {
    use RDKafkaErrorCode::*;
    match error.rdkafka_error_code() {
        code @ Some(TopicAuthorizationFailed | GroupAuthorizationFailed | ClusterAuthorizationFailed) => refusal(code, &error.to_string(), user, None),
        _ => None,
    }
}

/// True when `error` (or anything it was caused by) is an access refusal.
pub fn is_refusal(error: &anyhow::Error) -> bool {
    error.chain().any(|c| c.is::<AccessRefused>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_certificates_and_acls_are_told_apart() {
        let auth = refusal(Some(RDKafkaErrorCode::Authentication), "SASL authentication error: Authentication failed", Some("docrepl"), None).unwrap();
        assert!(auth.0.contains("SASL credentials of user \"docrepl\"") && auth.0.contains("sasl.password"), "{auth}");
        let tls = refusal(Some(RDKafkaErrorCode::SSL), "SSL handshake failed: certificate verify failed", None, None).unwrap();
        assert!(tls.0.contains("not trusted") && tls.0.contains("ssl.ca.location"), "{tls}");
        let acl = refusal(Some(RDKafkaErrorCode::GroupAuthorizationFailed), "Broker: Group authorization failed", Some("u"), None).unwrap();
        assert!(acl.0.contains("ACL"), "{acl}");
        let iam = refusal(Some(RDKafkaErrorCode::Authentication), "SASL authentication error: Access denied", None, Some("us-east-1")).unwrap();
        assert!(iam.0.contains("MSK IAM token") && iam.0.contains("kafka.aws_region (us-east-1)"), "{iam}");
        assert_eq!(refusal(Some(RDKafkaErrorCode::BrokerTransportFailure), "Connection refused", None, None), None);
    }
}
