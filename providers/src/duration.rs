//! A backend's `timeout`: one syntax, one bound and one message for every
//! backend, the same duration strings as the plugin's `deadline` ("10s",
//! "2.5s", "500ms", parsed by `humantime`).
//!
//! A bare number of seconds (`timeout = 5`, `timeout = 2.5`), what the
//! backends took before, is still read, with a deprecation warning, so no
//! existing config stops loading.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserialize, Deserializer, Visitor};

use crate::ConfigError;

/// When a table has no `timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Less cannot complete a TLS handshake (and 1e-10 s rounds to zero).
pub const MIN_TIMEOUT: Duration = Duration::from_millis(100);
/// The largest bound any backend accepted before (azure's), so no config
/// that loaded stops loading; the plugin's `deadline` (at most 30 s) bounds
/// every lookup anyway.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(300);

/// A `timeout` as written. Checked by [`Timeout::resolve`], which knows the
/// key: a serde error inside a flattened table would not name it.
#[derive(Debug, Clone, PartialEq)]
pub enum Timeout {
    /// `"10s"`, `"2.5s"`, `"500ms"`.
    Text(String),
    /// Deprecated: a number of seconds.
    Seconds(f64),
}

impl From<&str> for Timeout {
    fn from(text: &str) -> Self {
        Timeout::Text(text.to_string())
    }
}

impl Timeout {
    /// The checked duration of `setting` (the default when absent). `key`
    /// is the setting's path (`providers.<name>.timeout`), named in errors
    /// and in the deprecation warning.
    pub fn resolve(setting: Option<&Timeout>, key: &str) -> Result<Duration, ConfigError> {
        let (value, shown) = match setting {
            None => return Ok(DEFAULT_TIMEOUT),
            Some(Timeout::Text(text)) => {
                let value = humantime::parse_duration(text.trim()).map_err(|err| {
                    ConfigError::new(
                        key,
                        format!(
                            "'{}' is not a duration: {err} (e.g. \"10s\", \"2.5s\", \"500ms\")",
                            crate::text::shown(text)
                        ),
                    )
                })?;
                (Some(value), text.clone())
            }
            // NaN, infinite and negative numbers are no Duration: out of range.
            Some(Timeout::Seconds(seconds)) => (
                Duration::try_from_secs_f64(*seconds).ok(),
                seconds.to_string(),
            ),
        };
        let value = value
            .filter(|value| (MIN_TIMEOUT..=MAX_TIMEOUT).contains(value))
            .ok_or_else(|| {
                ConfigError::new(
                    key,
                    format!(
                        "'{}' is out of range: give {} to {} (e.g. \"10s\")",
                        crate::text::shown(&shown),
                        humantime::format_duration(MIN_TIMEOUT),
                        humantime::format_duration(MAX_TIMEOUT)
                    ),
                )
            })?;
        if let Some(Timeout::Seconds(seconds)) = setting {
            crate::config::deprecated(
                key,
                &format!("a bare number of seconds is deprecated; write \"{seconds}s\""),
            );
        }
        Ok(value)
    }
}

impl<'de> Deserialize<'de> for Timeout {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct Expected;
        impl<'de> Visitor<'de> for Expected {
            type Value = Timeout;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"10s\", \"2.5s\" or \"500ms\"")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Timeout, E> {
                Ok(Timeout::Text(text.to_string()))
            }
            // The deprecated forms: TOML integers and floats.
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Timeout, E> {
                Ok(Timeout::Seconds(n as f64))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Timeout, E> {
                Ok(Timeout::Seconds(n as f64))
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<Timeout, E> {
                Ok(Timeout::Seconds(n))
            }
        }
        de.deserialize_any(Expected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    struct Table {
        timeout: Option<Timeout>,
    }

    fn resolve(toml_value: &str) -> Result<Duration, ConfigError> {
        let table: Table = toml::from_str(&format!("timeout = {toml_value}")).unwrap();
        Timeout::resolve(table.timeout.as_ref(), "providers.v.timeout")
    }

    #[test]
    fn reads_durations_and_the_deprecated_seconds() {
        assert_eq!(resolve("\"10s\""), Ok(Duration::from_secs(10)));
        assert_eq!(resolve("\"2.5s\""), Ok(Duration::from_millis(2500)));
        assert_eq!(resolve("\"500ms\""), Ok(Duration::from_millis(500)));
        assert_eq!(resolve("\"5m\""), Ok(Duration::from_secs(300)));
        assert_eq!(resolve("5"), Ok(Duration::from_secs(5)));
        assert_eq!(resolve("2.5"), Ok(Duration::from_millis(2500)));
        assert_eq!(resolve("0.1"), Ok(Duration::from_millis(100)));
        let table: Table = toml::from_str("").unwrap();
        assert_eq!(
            Timeout::resolve(table.timeout.as_ref(), "k"),
            Ok(DEFAULT_TIMEOUT)
        );
    }

    #[test]
    fn one_bound_and_one_message_naming_the_key() {
        for bad in [
            "\"0s\"", "\"99ms\"", "\"301s\"", "\"1h\"", "0", "-1", "0.099", "300.5", "1e-10",
            "1e300", "nan", "inf", "-inf",
        ] {
            let err = resolve(bad).unwrap_err();
            assert_eq!(err.key, "providers.v.timeout", "{bad}");
            assert!(
                err.message
                    .ends_with("is out of range: give 100ms to 5m (e.g. \"10s\")"),
                "{bad}: {err}"
            );
        }
        assert_eq!(
            resolve("\"0s\"").unwrap_err().to_string(),
            "providers.v.timeout: '0s' is out of range: give 100ms to 5m (e.g. \"10s\")"
        );
        let err = resolve("\"ten\\nseconds\"").unwrap_err();
        assert_eq!(err.key, "providers.v.timeout");
        assert!(
            err.message
                .starts_with("'ten\\u{a}seconds' is not a duration"),
            "{err}"
        );
        assert!(!err.to_string().contains('\n'), "{err}");
        // Neither a string nor a number.
        assert!(toml::from_str::<Table>("timeout = true").is_err());
    }

    #[test]
    fn the_deprecated_form_logs_a_warning_naming_the_key_and_the_new_form() {
        let logged = crate::config::tests::logged(|| {
            resolve("2.5").unwrap();
            resolve("\"2.5s\"").unwrap();
        });
        assert_eq!(logged.lines().count(), 1, "{logged}");
        assert!(logged.contains("WARN"), "{logged}");
        assert!(
            logged.contains(
                "providers.v.timeout: a bare number of seconds is deprecated; write \"2.5s\""
            ),
            "{logged}"
        );
    }
}
