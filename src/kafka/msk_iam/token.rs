//! The token Amazon MSK's IAM access control takes as SASL OAUTHBEARER: a SigV4-presigned
//! `GET https://kafka.<region>.amazonaws.com/?Action=kafka-cluster:Connect`, valid 900
//! seconds, with a `User-Agent` parameter added after signing, the whole URL base64url
//! encoded without padding. That is what AWS's own signers build (`aws-msk-iam-auth`'s
//! `IAMOAuthBearerLoginCallbackHandler`, `aws-msk-iam-sasl-signer-{go,python,js,net}`);
//! `tests/msk_iam.rs` checks ours against the Java one. The signing is the AWS SDK's
//! (`aws-sigv4`); this module only builds the request and the token. No I/O.

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use base64::Engine;

/// The service name MSK's tokens are signed for (the credential scope's service).
pub const SIGNING_NAME: &str = "kafka-cluster";
/// How long a presigned token is valid, as every AWS signer makes them.
pub const TOKEN_SECONDS: u64 = 900;
/// The token's principal as librdkafka reports it (MSK derives the real one, the IAM
/// identity, from the signature; AWS's Java signer names it so too).
pub const PRINCIPAL: &str = "kafka-cluster";

/// A token and when it stops being valid: at the end of its 900 seconds, or when the
/// credentials it was signed with expire, whichever comes first (a temporary
/// credential's session token dies with it, and MSK refuses a URL signed with it).
pub struct Token {
    pub value: String,
    pub expires_at: SystemTime,
}

/// Never shows the token: it grants access to the cluster until it expires.
impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token").field("value", &"<redacted>").field("expires_at", &self.expires_at).finish()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot sign the MSK IAM token: {0}")]
pub struct SignError(String);

/// The MSK host a token names for `region`.
pub fn endpoint_host(region: &str) -> String {
    format!("kafka.{region}.amazonaws.com")
}

/// The token for `region`, signed with `credentials` at `at`; `user_agent` goes in its
/// `User-Agent` parameter (outside the signature, as AWS's signers put it).
pub fn sign(region: &str, credentials: &Credentials, at: SystemTime, user_agent: &str) -> Result<Token, SignError> {
    use aws_sigv4::http_request::{sign as sigv4_sign, SignableBody, SignableRequest, SignatureLocation, SigningSettings};
    use aws_sigv4::sign::v4;

    let mut url = url::Url::parse(&format!("https://{}/", endpoint_host(region))).map_err(|e| SignError(e.to_string()))?;
    url.query_pairs_mut().append_pair("Action", "kafka-cluster:Connect");

    let mut settings = SigningSettings::default();
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(Duration::from_secs(TOKEN_SECONDS));
    let identity = credentials.clone().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(SIGNING_NAME)
        .time(at)
        .settings(settings)
        .build()
        .map_err(|e| SignError(e.to_string()))?;
    let request = SignableRequest::new("GET", url.as_str(), std::iter::empty(), SignableBody::Bytes(&[])).map_err(|e| SignError(e.to_string()))?;
    let (instructions, _signature) = sigv4_sign(request, &params.into()).map_err(|e| SignError(e.to_string()))?.into_parts();
    {
        let mut query = url.query_pairs_mut();
        for (name, value) in instructions.params() {
            query.append_pair(name, value);
        }
        query.append_pair("User-Agent", user_agent);
    }

    let signed_until = at + Duration::from_secs(TOKEN_SECONDS);
    let expires_at = credentials.expiry().map_or(signed_until, |e| e.min(signed_until));
    Ok(Token { value: base64::prelude::BASE64_URL_SAFE_NO_PAD.encode(url.as_str()), expires_at })
}

/// The region of MSK brokers named in `bootstrap_servers`
/// (`b-1.<cluster>.<id>.c2.kafka.<region>.amazonaws.com:9098`, Serverless
/// `boot-<id>.c1.kafka-serverless.<region>.amazonaws.com:9098`), when every name that is
/// an MSK one says the same region. `Err` lists the regions when they disagree.
pub fn region_of_brokers(bootstrap_servers: &str) -> Result<Option<String>, Vec<String>> {
    let mut regions: Vec<String> = Vec::new();
    for server in bootstrap_servers.split(',') {
        let host = server.trim().rsplit_once(':').map_or(server.trim(), |(h, _)| h).to_ascii_lowercase();
        let Some(rest) = host.strip_suffix(".amazonaws.com") else { continue };
        let labels: Vec<&str> = rest.split('.').collect();
        if let [.., service, region] = labels.as_slice() {
            if (*service == "kafka" || *service == "kafka-serverless") && !regions.iter().any(|r| r == region) {
                regions.push(region.to_string());
            }
        }
    }
    match regions.len() {
        0 => Ok(None),
        1 => Ok(regions.pop()),
        _ => Err(regions),
    }
}

/// True for an AWS region name as `us-east-1`, `eu-central-2`, `us-gov-west-1`,
/// `ap-southeast-5`.
pub fn looks_like_region(region: &str) -> bool {
    let parts: Vec<&str> = region.split('-').collect();
    parts.len() >= 3
        && parts[0].len() == 2
        && parts.iter().all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()))
        && parts.last().is_some_and(|n| n.chars().all(|c| c.is_ascii_digit()))
        && parts[..parts.len() - 1].iter().all(|p| p.chars().all(|c| c.is_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn decode(token: &Token) -> url::Url {
        let bytes = base64::prelude::BASE64_URL_SAFE_NO_PAD.decode(&token.value).expect("base64url without padding");
        url::Url::parse(std::str::from_utf8(&bytes).expect("utf-8")).expect("a URL")
    }

    /// A token AWS's Java signer (software.amazon.msk:aws-msk-iam-auth 2.4.0,
    /// `IAMOAuthBearerLoginCallbackHandler`) made for these credentials in us-east-1,
    /// captured from `tests/msk_iam.rs`'s run of it: the same request signed at the same
    /// second gives the same signature.
    /// (X-Amz-Date 20261207T124047Z.)
    const JAVA_SIGNED_AT: u64 = 1_796_647_247;
    const JAVA_SIGNATURE: &str = "9fb165b21af9aec051737ad16753e3172cfd76a351b4bf0e57d99974a7c869e0";

    #[test]
    fn the_signature_aws_java_signer_made() {
        let creds = Credentials::new("AKIDEXAMPLEDOCREPL", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", Some("FwoGZXIvYXdzEXAMPLE//token+=".into()), None, "test");
        let token = sign("us-east-1", &creds, at(JAVA_SIGNED_AT), "docrepl/test").unwrap();
        let params: HashMap<String, String> = decode(&token).query_pairs().into_owned().collect();
        assert_eq!(params["X-Amz-Signature"], JAVA_SIGNATURE);
        assert_eq!(params["X-Amz-Date"], "20261207T124047Z");
        assert_eq!(params["X-Amz-Security-Token"], "FwoGZXIvYXdzEXAMPLE//token+=");
    }

    /// What the tests of AWS's Go, Python and Rust-community signers check of a token
    /// (aws-msk-iam-sasl-signer-go signer/msk_auth_token_provider_test.go
    /// `verifyAuthToken`, -python tests/test_auth_token_provider.py).
    #[test]
    fn the_token_has_the_form_aws_signers_test_for() {
        let creds = Credentials::new("MOCK-ACCESS-KEY", "MOCK-SECRET-KEY", Some("MOCK-SESSION-TOKEN".into()), None, "test");
        let signed = at(1_764_000_000);
        let token = sign("us-west-2", &creds, signed, "docrepl/0.1.0").unwrap();
        assert!(!token.value.contains('=') && !token.value.contains('+') && !token.value.contains('/'), "base64url without padding");
        let url = decode(&token);
        assert_eq!(url.scheme(), "https");
        assert_eq!(url.host_str(), Some("kafka.us-west-2.amazonaws.com"));
        let params: HashMap<String, String> = url.query_pairs().into_owned().collect();
        assert_eq!(params["Action"], "kafka-cluster:Connect");
        assert_eq!(params["X-Amz-Algorithm"], "AWS4-HMAC-SHA256");
        assert_eq!(params["X-Amz-Expires"], "900");
        assert_eq!(params["X-Amz-Security-Token"], "MOCK-SESSION-TOKEN");
        assert_eq!(params["X-Amz-SignedHeaders"], "host");
        assert_eq!(params["X-Amz-Date"], "20251124T160000Z");
        let scope: Vec<&str> = params["X-Amz-Credential"].split('/').collect();
        assert_eq!(scope, ["MOCK-ACCESS-KEY", "20251124", "us-west-2", "kafka-cluster", "aws4_request"]);
        assert_eq!(params["X-Amz-Signature"].len(), 64);
        assert_eq!(params["User-Agent"], "docrepl/0.1.0");
        // The query starts with the action, as the Java signer's does.
        assert!(url.query().unwrap().starts_with("Action=kafka-cluster%3AConnect&"), "{url}");
        assert_eq!(token.expires_at, signed + Duration::from_secs(900));
        assert!(!format!("{token:?}").contains(&token.value));
    }

    #[test]
    fn credentials_that_expire_sooner_end_the_token_sooner() {
        let signed = at(1_764_000_000);
        let soon = signed + Duration::from_secs(60);
        let creds = Credentials::new("AKID", "SECRET", Some("TOKEN".into()), Some(soon), "test");
        assert_eq!(sign("eu-west-1", &creds, signed, "docrepl").unwrap().expires_at, soon);
        let without_token = Credentials::new("AKID", "SECRET", None, None, "test");
        let params: HashMap<String, String> = decode(&sign("eu-west-1", &without_token, signed, "docrepl").unwrap()).query_pairs().into_owned().collect();
        assert!(!params.contains_key("X-Amz-Security-Token"));
    }

    #[test]
    fn a_different_key_time_or_region_signs_differently() {
        let signature = |region: &str, secret: &str, t: u64| {
            let c = Credentials::new("AKID", secret, None, None, "test");
            let params: HashMap<String, String> = decode(&sign(region, &c, at(t), "docrepl").unwrap()).query_pairs().into_owned().collect();
            params["X-Amz-Signature"].clone()
        };
        let base = signature("us-east-1", "SECRET", 1_764_000_000);
        assert_eq!(base, signature("us-east-1", "SECRET", 1_764_000_000), "the same input signs the same");
        assert_ne!(base, signature("us-east-2", "SECRET", 1_764_000_000));
        assert_ne!(base, signature("us-east-1", "SECRET2", 1_764_000_000));
        assert_ne!(base, signature("us-east-1", "SECRET", 1_764_000_001));
    }

    #[test]
    fn regions_are_read_from_msk_broker_names() {
        assert_eq!(region_of_brokers("b-1.orders.abc123.c2.kafka.us-east-1.amazonaws.com:9098,b-2.orders.abc123.c2.kafka.us-east-1.amazonaws.com:9098"), Ok(Some("us-east-1".into())));
        assert_eq!(region_of_brokers("boot-abcd1234.c1.kafka-serverless.eu-west-1.amazonaws.com:9098"), Ok(Some("eu-west-1".into())));
        assert_eq!(region_of_brokers("127.0.0.1:9092,broker.internal:9092"), Ok(None));
        assert_eq!(
            region_of_brokers("b-1.x.y.c2.kafka.us-east-1.amazonaws.com:9098,b-1.x.y.c2.kafka.eu-west-1.amazonaws.com:9098"),
            Err(vec!["us-east-1".to_string(), "eu-west-1".to_string()])
        );
        for ok in ["us-east-1", "eu-central-2", "us-gov-west-1", "ap-southeast-5"] {
            assert!(looks_like_region(ok), "{ok}");
        }
        for bad in ["", "us-east", "US-EAST-1", "useast1", "us-east-1a", "us--1", "kafka.us-east-1"] {
            assert!(!looks_like_region(bad), "{bad}");
        }
    }
}
