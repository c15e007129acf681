//! The one error type of the store, and the redaction of secrets in URLs.

/// Everything that can go wrong in the store.
///
/// Messages are meant to be shown to operators as they are, so they never
/// contain a password: URLs are passed through [`redact_url`] first.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database URL cannot be used (unknown scheme, bad syntax).
    #[error("invalid database URL {url}: {reason}")]
    InvalidUrl { url: String, reason: String },
    /// The database could not be reached or opened.
    #[error("cannot connect to {backend} database at {url}: {reason}")]
    Connect {
        backend: &'static str,
        url: String,
        reason: String,
    },
    /// Applying the embedded migrations failed.
    #[error("database migration failed: {0}")]
    Migrate(String),
    /// A record that the operation needs does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The caller passed a value the store cannot accept.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A stored JSON column could not be (de)serialised.
    #[error("stored data is malformed: {0}")]
    Data(String),
    /// Any other database error.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        StoreError::Data(e.to_string())
    }
}

/// Short alias used throughout the crate.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Replaces the password of every `scheme://user:password@host` in `text` by
/// `***` (and the bare password of `redis://password@host`), so that URLs can
/// appear in errors and logs. The one redaction the store and the app share.
///
/// Works on free text (not only on a lone URL) because driver error messages
/// sometimes quote the URL they were given.
pub fn redact_url(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("://") {
        let (head, tail) = rest.split_at(pos + 3);
        out.push_str(head);
        // The authority ends at the first '/', '?', '#' or whitespace.
        let end = tail
            .find(|c: char| c == '/' || c == '?' || c == '#' || c.is_whitespace())
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                match userinfo.find(':') {
                    Some(colon) => {
                        out.push_str(&userinfo[..colon]);
                        out.push_str(":***");
                    }
                    // Redis URLs often carry only a password (`redis://pw@host`).
                    None if head.ends_with("redis://") || head.ends_with("rediss://") => {
                        out.push_str("***")
                    }
                    None => out.push_str(userinfo),
                }
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(
            redact_url("postgres://ot:s3cr3t@db:5432/ot"),
            "postgres://ot:***@db:5432/ot"
        );
        assert_eq!(
            redact_url("postgres://ot@db/ot"),
            "postgres://ot@db/ot",
            "no password, nothing to hide"
        );
        assert_eq!(
            redact_url("error at postgresql://a:b@h?x=1 and redis://:pw@r:6379/0"),
            "error at postgresql://a:***@h?x=1 and redis://:***@r:6379/0"
        );
        assert_eq!(redact_url("sqlite://./data/x.db"), "sqlite://./data/x.db");
        assert_eq!(redact_url("no url"), "no url");
        assert_eq!(redact_url("p://u:p@ss@h/db"), "p://u:***@h/db");
    }
}
