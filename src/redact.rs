//! Masking of secrets (passwords in connection strings, SASL passwords) before anything
//! is printed, logged or served on `/status`.

use std::collections::BTreeMap;

/// What a secret is replaced with.
pub const MASK: &str = "***";

/// `mongodb://user:pw@host/...` → `mongodb://user:***@host/...`; also masks password-like
/// query options (`password=`, `...secret...=`). Strings without secrets come back unchanged.
pub fn redact_uri(uri: &str) -> String {
    let (scheme, rest) = match uri.split_once("://") {
        Some(parts) => parts,
        None => return uri.to_string(),
    };
    // The userinfo ends at the last '@' before the path/query starts.
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{user}:{MASK}@{hosts}"),
            None => format!("{userinfo}@{hosts}"),
        },
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if is_secret_key(k) => format!("{k}={MASK}"),
                    _ => kv.to_string(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_string(),
    };
    format!("{scheme}://{authority}{tail}")
}

/// True for configuration keys whose values are secrets (`sasl.password`,
/// `ssl.key.password`, `sasl.oauthbearer.client.secret`, ...).
pub fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key.contains("password") || key.contains("secret") || key.contains("token")
}

/// A copy of a property map with secret values masked.
pub fn redact_properties(props: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    props
        .iter()
        .map(|(k, v)| (k.clone(), if is_secret_key(k) { MASK.to_string() } else { v.clone() }))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_password_keeps_user_and_hosts() {
        assert_eq!(
            redact_uri("mongodb://app:s3cr%40t@h1:27017,h2:27017/db?tls=true&replicaSet=rs0"),
            "mongodb://app:***@h1:27017,h2:27017/db?tls=true&replicaSet=rs0"
        );
    }

    #[test]
    fn masks_password_with_at_sign_and_query_secrets() {
        let r = redact_uri("mongodb://u:p@ss@h/?authMechanismProperties=x&tlsCertificateKeyFilePassword=zz");
        assert!(!r.contains("p@ss") && !r.contains("zz"), "{r}");
    }

    #[test]
    fn leaves_plain_uris_alone() {
        let uri = "mongodb://127.0.0.1:27117/?replicaSet=rs-source";
        assert_eq!(redact_uri(uri), uri);
        assert_eq!(redact_uri("not a uri"), "not a uri");
    }
}
