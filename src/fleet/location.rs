//! Where the fleet's store is, and how to reach it: `s3://bucket/prefix`
//! (AWS S3 or any S3-compatible store through an endpoint) or
//! `file:///directory` (one host, tests).
//!
//! Credentials follow the AWS conventions: `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN`) from the environment,
//! else the shared credentials file (`credentials_file`, else
//! `$AWS_SHARED_CREDENTIALS_FILE`, else `~/.aws/credentials`) under
//! profile `$AWS_PROFILE` (else `default`), else the instance's role. The
//! endpoint and region come from the settings, else `AWS_ENDPOINT_URL` and
//! `AWS_REGION` / `AWS_DEFAULT_REGION`. HTTPS unless `allow_http`.
//! Nothing here logs or formats a secret.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};

use super::FleetError;

/// How to reach the fleet's store (`[fleet]` in the configuration, or
/// the command line's `--url`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreSettings {
    /// `s3://bucket/prefix` or `file:///directory`.
    pub url: String,
    /// An S3-compatible endpoint (`https://minio.example:9000`).
    pub endpoint: Option<String>,
    /// The region.
    pub region: Option<String>,
    /// Allow `http://` endpoints (loopback tests, a private network).
    pub allow_http: bool,
    /// The shared credentials file.
    pub credentials_file: Option<PathBuf>,
}

/// Time allowed to open a connection to the store.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed for one request (a 16 MiB range or part at least).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

type Opened = (Arc<dyn ObjectStore>, ObjectPath, Option<PathBuf>);

impl StoreSettings {
    /// Settings for `url` with everything else from the environment.
    pub fn from_url(url: &str) -> StoreSettings {
        StoreSettings {
            url: url.to_string(),
            ..StoreSettings::default()
        }
    }

    fn refuse(&self, reason: impl Into<String>) -> FleetError {
        FleetError::Url {
            url: self.url.clone(),
            reason: reason.into(),
        }
    }

    /// Checks the URL's form without opening anything.
    pub fn check(&self) -> Result<(), FleetError> {
        self.parts().map(|_| ())
    }

    /// (scheme, bucket or directory, prefix).
    fn parts(&self) -> Result<(&str, &str, &str), FleetError> {
        let (scheme, rest) = self
            .url
            .split_once("://")
            .ok_or_else(|| self.refuse("expected s3://bucket/prefix or file:///directory"))?;
        match scheme {
            "s3" => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(self.refuse("no bucket"));
                }
                Ok((scheme, bucket, prefix.trim_matches('/')))
            }
            "file" => {
                if !rest.starts_with('/') {
                    return Err(
                        self.refuse("a file URL needs an absolute path (file:///srv/fleet)")
                    );
                }
                Ok((scheme, rest, ""))
            }
            other => Err(self.refuse(format!(
                "scheme {other:?} is not supported (s3:// or file://)"
            ))),
        }
    }

    /// Opens the store: the client, the prefix inside it, and for a local
    /// directory its path.
    pub(super) fn open(&self) -> Result<Opened, FleetError> {
        let (scheme, place, prefix) = self.parts()?;
        let prefix = ObjectPath::from(prefix);
        if scheme == "file" {
            let root = PathBuf::from(place);
            std::fs::create_dir_all(&root).map_err(|e| FleetError::Io {
                path: root.display().to_string(),
                error: e,
            })?;
            let store =
                LocalFileSystem::new_with_prefix(&root).map_err(|e| self.refuse(e.to_string()))?;
            return Ok((Arc::new(store), prefix, Some(root)));
        }
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(place)
            .with_retry(RetryConfig {
                backoff: BackoffConfig::default(),
                max_retries: 3,
                retry_timeout: Duration::from_secs(20),
            })
            .with_client_options(
                ClientOptions::new()
                    .with_connect_timeout(CONNECT_TIMEOUT)
                    .with_timeout(REQUEST_TIMEOUT)
                    .with_allow_http(
                        self.allow_http
                            || env("AWS_ALLOW_HTTP").is_some_and(|v| v == "true" || v == "1"),
                    ),
            );
        if let Some(e) = &self.endpoint {
            b = b.with_endpoint(e);
        }
        if let Some(r) = &self.region {
            b = b.with_region(r);
        }
        if env("AWS_ACCESS_KEY_ID").is_none() {
            if let Some(c) = self.credentials_from_file()? {
                b = b
                    .with_access_key_id(c.key_id)
                    .with_secret_access_key(c.secret);
                if let Some(t) = c.token {
                    b = b.with_token(t);
                }
            }
        }
        let store = b.build().map_err(|e| self.refuse(e.to_string()))?;
        Ok((Arc::new(store), prefix, None))
    }

    /// The profile's keys from the shared credentials file, if there is a
    /// file. A file that exists but lacks the profile is an error.
    fn credentials_from_file(&self) -> Result<Option<Credentials>, FleetError> {
        let path = match (
            &self.credentials_file,
            std::env::var_os("AWS_SHARED_CREDENTIALS_FILE"),
        ) {
            (Some(p), _) => p.clone(),
            (None, Some(p)) => PathBuf::from(p),
            (None, None) => match std::env::var_os("HOME") {
                Some(home) => PathBuf::from(home).join(".aws/credentials"),
                None => return Ok(None),
            },
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound && self.credentials_file.is_none() =>
            {
                return Ok(None)
            }
            Err(e) => {
                return Err(FleetError::Io {
                    path: path.display().to_string(),
                    error: e,
                })
            }
        };
        let profile = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".into());
        parse_credentials(&text, &profile)
            .map(Some)
            .map_err(|reason| FleetError::Url {
                url: self.url.clone(),
                reason: format!("credentials file {}: {reason}", path.display()),
            })
    }
}

/// Keys of one profile.
struct Credentials {
    key_id: String,
    secret: String,
    token: Option<String>,
}

/// Shows no key.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").finish_non_exhaustive()
    }
}

/// The `[profile]` section of an AWS shared credentials file (INI:
/// `aws_access_key_id`, `aws_secret_access_key`, `aws_session_token`).
/// Errors name the line, never a value.
fn parse_credentials(text: &str, profile: &str) -> Result<Credentials, String> {
    let (mut in_profile, mut seen) = (false, false);
    let (mut key_id, mut secret, mut token) = (None, None, None);
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_profile = name.trim() == profile;
            seen |= in_profile;
            continue;
        }
        if !in_profile {
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| format!("line {}: expected key = value", n + 1))?;
        let v = Some(v.trim().to_string());
        match k.trim() {
            "aws_access_key_id" => key_id = v,
            "aws_secret_access_key" => secret = v,
            "aws_session_token" => token = v,
            _ => {}
        }
    }
    if !seen {
        return Err(format!("no [{profile}] profile"));
    }
    match (key_id, secret) {
        (Some(key_id), Some(secret)) => Ok(Credentials {
            key_id,
            secret,
            token,
        }),
        _ => Err(format!(
            "profile [{profile}] lacks aws_access_key_id or aws_secret_access_key"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        for ok in ["s3://bucket", "s3://bucket/a/b/", "file:///srv/fleet"] {
            StoreSettings::from_url(ok).check().unwrap();
        }
        for (bad, why) in [
            ("bucket/prefix", "expected s3://"),
            ("s3:///prefix", "no bucket"),
            ("file://relative/dir", "absolute path"),
            ("gs://bucket", "not supported"),
        ] {
            let e = StoreSettings::from_url(bad)
                .check()
                .unwrap_err()
                .to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn a_profile_is_read_from_the_credentials_file() {
        let text = "[default]\naws_access_key_id = A\naws_secret_access_key = S\n\n\
                    [ops]\n# comment\naws_access_key_id=B\naws_secret_access_key=T\naws_session_token = X\n";
        let c = parse_credentials(text, "ops").unwrap();
        assert_eq!(
            (c.key_id.as_str(), c.secret.as_str(), c.token.as_deref()),
            ("B", "T", Some("X"))
        );
        let c = parse_credentials(text, "default").unwrap();
        assert_eq!((c.key_id.as_str(), c.token), ("A", None));
        assert!(parse_credentials(text, "other")
            .unwrap_err()
            .contains("no [other] profile"));
        let e =
            parse_credentials("[default]\naws_access_key_id = A\nsecret\n", "default").unwrap_err();
        assert!(e.contains("line 3") && !e.contains('A'), "{e}");
        let e = parse_credentials("[default]\naws_access_key_id = A\n", "default").unwrap_err();
        assert!(e.contains("lacks"), "{e}");
    }
}
