//! Falco's rule priorities.
use std::fmt;
use std::str::FromStr;

/// Falco's priorities, most severe first: `Emergency < Debug`, so
/// `priority <= minimum` reads "at least as severe as `minimum`".
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    Emergency,
    Alert,
    Critical,
    Error,
    Warning,
    Notice,
    Informational,
    Debug,
}

impl Priority {
    pub const ALL: [Priority; 8] = [
        Priority::Emergency,
        Priority::Alert,
        Priority::Critical,
        Priority::Error,
        Priority::Warning,
        Priority::Notice,
        Priority::Informational,
        Priority::Debug,
    ];

    /// Falco's spelling, as used in alert payloads.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Emergency => "Emergency",
            Priority::Alert => "Alert",
            Priority::Critical => "Critical",
            Priority::Error => "Error",
            Priority::Warning => "Warning",
            Priority::Notice => "Notice",
            Priority::Informational => "Informational",
            Priority::Debug => "Debug",
        }
    }

    /// Case-insensitive, with Falco's `info` alias.
    pub fn parse(raw: &str) -> Option<Priority> {
        let raw = raw.trim();
        Priority::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(raw))
            .or_else(|| {
                raw.eq_ignore_ascii_case("info")
                    .then_some(Priority::Informational)
            })
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The text was not one of Falco's priority names.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid priority '{0}': expected one of Emergency, Alert, Critical, Error, Warning, Notice, Informational (info), Debug"
)]
pub struct InvalidPriority(pub String);

impl FromStr for Priority {
    type Err = InvalidPriority;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Priority::parse(s).ok_or_else(|| InvalidPriority(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_falco() {
        assert_eq!(Priority::parse("WARNING"), Some(Priority::Warning));
        assert_eq!(Priority::parse("info"), Some(Priority::Informational));
        assert_eq!(
            Priority::parse("Informational"),
            Some(Priority::Informational)
        );
        assert_eq!(Priority::parse(" critical "), Some(Priority::Critical));
        assert_eq!(Priority::parse("loud"), None);
        assert!("nope".parse::<Priority>().is_err());
    }

    #[test]
    fn orders_most_severe_first() {
        assert!(Priority::Emergency < Priority::Warning);
        assert!(Priority::Warning < Priority::Debug);
        assert_eq!(Priority::Notice.to_string(), "Notice");
    }
}
