//! Passwords kept out of the config file and the URI: `password_file` (a mounted
//! Kubernetes secret, a file only the service user reads) or `password_env` (a variable
//! set from a secret) of `[source]` and `[sink]`, put into the URI's user at start. The
//! URI then names the user only (`mongodb://docrepl@orders.cluster-….docdb.amazonaws.com`).
//! What is printed of a URI is always redacted (`crate::redact`).

use std::path::{Path, PathBuf};

use crate::config::ConfigError;

/// Where a section's password comes from, when not from its URI.
#[derive(Debug, Clone, Copy)]
pub struct PasswordFrom<'a> {
    /// The section, as in key names: `source` or `sink`.
    pub section: &'a str,
    pub file: Option<&'a PathBuf>,
    pub env: Option<&'a str>,
}

/// `uri` with the password of `from` (read with `read_file` or `read_env`) put in; `uri`
/// as it is when `from` names none.
pub fn with_password(
    uri: &str,
    from: PasswordFrom<'_>,
    read_file: impl Fn(&Path) -> std::io::Result<String>,
    read_env: impl Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    let section = from.section;
    let password = match (from.file, from.env) {
        (None, None) => return Ok(uri.to_string()),
        (Some(_), Some(_)) => {
            return Err(ConfigError::invalid(format!("{section}.password_env"), "set either password_file or password_env, not both"));
        }
        (Some(path), None) => {
            let text = read_file(path).map_err(|e| {
                ConfigError::invalid(format!("{section}.password_file"), format!("cannot read {}: {e} (mount the secret there, readable by the service's user)", path.display()))
            })?;
            // A secret file often ends with a newline that is not part of the password.
            text.strip_suffix("\r\n").or_else(|| text.strip_suffix('\n')).unwrap_or(&text).to_string()
        }
        (None, Some(var)) => read_env(var)
            .ok_or_else(|| ConfigError::invalid(format!("{section}.password_env"), format!("environment variable {var} is not set")))?,
    };
    if password.is_empty() {
        return Err(ConfigError::invalid(format!("{section}.password_{}", if from.file.is_some() { "file" } else { "env" }), "the password is empty"));
    }
    insert_password(uri, &password).map_err(|message| ConfigError::invalid(format!("{section}.uri"), message))
}

/// Puts `password`, percent-encoded, after the user of `mongodb://user@host...`.
fn insert_password(uri: &str, password: &str) -> Result<String, String> {
    let (scheme, rest) = uri.split_once("://").ok_or("is not a mongodb:// or mongodb+srv:// URI")?;
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return Err("names no user: with password_file or password_env, write the user in the URI (mongodb://docrepl@host/...)".into());
    };
    let user = &rest[..at];
    if user.contains(':') {
        return Err("already holds a password: give it in one place (the URI, password_file or password_env)".into());
    }
    Ok(format!("{scheme}://{user}:{}{}", percent_encode(password), &rest[at..]))
}

/// RFC 3986 percent-encoding of everything but the unreserved characters, as the
/// connection string format asks of a password.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from<'a>(file: Option<&'a PathBuf>, env: Option<&'a str>) -> PasswordFrom<'a> {
        PasswordFrom { section: "source", file, env }
    }

    #[test]
    fn a_password_from_a_file_or_a_variable_goes_into_the_uri() {
        let uri = "mongodb://docrepl@orders.cluster-c1.us-east-1.docdb.amazonaws.com:27017/?tls=true&replicaSet=rs0";
        let path = PathBuf::from("/etc/docrepl/secrets/source-password");
        let file = with_password(uri, from(Some(&path), None), |_| Ok("p@ss:w/rd%\n".into()), |_| None).unwrap();
        assert_eq!(file, "mongodb://docrepl:p%40ss%3Aw%2Frd%25@orders.cluster-c1.us-east-1.docdb.amazonaws.com:27017/?tls=true&replicaSet=rs0");
        let parsed = url::Url::parse(&file).unwrap();
        assert_eq!(percent_decode(parsed.password().unwrap()), "p@ss:w/rd%");
        let env = with_password(uri, from(None, Some("DOCDB_PASSWORD")), |_| unreachable!(), |v| (v == "DOCDB_PASSWORD").then(|| "s3cret".into())).unwrap();
        assert!(env.starts_with("mongodb://docrepl:s3cret@orders."), "{env}");
        assert_eq!(with_password(uri, from(None, None), |_| unreachable!(), |_| None).unwrap(), uri);
    }

    fn percent_decode(s: &str) -> String {
        url::form_urlencoded::parse(format!("x={s}").as_bytes()).next().map(|(_, v)| v.into_owned()).unwrap_or_default()
    }

    #[test]
    fn what_cannot_work_is_said() {
        let path = PathBuf::from("/nope");
        let err = |uri: &str, f: PasswordFrom<'_>| with_password(uri, f, |_| Err(std::io::Error::other("no such file")), |_| None).unwrap_err().to_string();
        assert!(err("mongodb://docrepl@h/", from(Some(&path), None)).contains("source.password_file") );
        assert!(err("mongodb://docrepl@h/", from(None, Some("NOPE"))).contains("NOPE is not set"));
        assert!(err("mongodb://docrepl@h/", from(Some(&path), Some("X"))).contains("not both"));
        let ok_file = |uri: &str| with_password(uri, from(Some(&path), None), |_| Ok("pw".into()), |_| None).unwrap_err().to_string();
        assert!(ok_file("mongodb://h:27017/?a=b").contains("names no user"));
        assert!(ok_file("mongodb://u:old@h/").contains("already holds a password"));
        // An @ in the query is not the user's.
        assert!(ok_file("mongodb://h/?authMechanismProperties=x@y").contains("names no user"));
        let empty = with_password("mongodb://u@h/", from(Some(&path), None), |_| Ok("\n".into()), |_| None).unwrap_err().to_string();
        assert!(empty.contains("empty"), "{empty}");
    }
}
