//! Values for log lines that come from outside: URLs without credentials,
//! query or fragment; client strings escaped (no forged lines).

use std::fmt;

/// A URL for the log: scheme, host, port and path only (no `user:pass@`,
/// no query with tokens), control characters escaped.
pub struct Url<'a>(pub &'a str);

impl fmt::Display for Url<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match reqwest::Url::parse(self.0) {
            Ok(mut u) => {
                let _ = u.set_username("");
                let _ = u.set_password(None);
                u.set_query(None);
                u.set_fragment(None);
                write!(f, "{}", u.as_str().escape_debug())
            }
            Err(_) => write!(f, "<invalid url, {} bytes>", self.0.len()),
        }
    }
}

/// A URL list for the log (see [`Url`]).
pub struct Urls<'a>(pub &'a [String]);

impl fmt::Display for Urls<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, u) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{}", Url(u))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_and_queries_are_dropped() {
        assert_eq!(
            Url("https://user:secret@cloud.example/nc/ocs?token=abc#x").to_string(),
            "https://cloud.example/nc/ocs"
        );
        assert_eq!(
            Url("nats://tok@nats.example:4222").to_string(),
            "nats://nats.example:4222"
        );
        assert_eq!(Url("not a url\n").to_string(), "<invalid url, 10 bytes>");
        assert_eq!(Url("http://h/a%0Ab\n").to_string().lines().count(), 1);
    }
}
