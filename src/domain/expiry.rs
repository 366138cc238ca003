//! When a token stops being chargeable (and is then shredded). One type for every way of
//! asking: Twilio `<Parameter>`s on tokenize and charge-with-save, and `PATCH /v1/tokens/{t}`.

use chrono::{DateTime, Duration, Utc};

use super::InvalidInput;

/// The longest time-to-live a token may be given, in days (ten years).
pub const MAX_TTL_DAYS: u32 = 3650;

/// A requested token expiry, validated but not yet resolved to an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenExpiry {
    /// The token never expires.
    Never,
    /// At this instant.
    At(DateTime<Utc>),
    /// This many days from now (1 to [`MAX_TTL_DAYS`]).
    AfterDays(u32),
    /// When the card does: the first instant after its expiry month.
    WithCard,
}

impl TokenExpiry {
    /// `days` from now; refused outside 1 to [`MAX_TTL_DAYS`] with `message`.
    pub fn after_days(days: u32, message: &'static str) -> Result<Self, InvalidInput> {
        if (1..=MAX_TTL_DAYS).contains(&days) {
            Ok(Self::AfterDays(days))
        } else {
            Err(InvalidInput::TokenExpiry(message))
        }
    }

    /// The instant it expires, `None` for never. `card_end` is the end of the card's validity
    /// (`None` for a bank account, which cannot expire "with the card").
    pub fn resolve(
        self,
        now: DateTime<Utc>,
        card_end: Option<DateTime<Utc>>,
    ) -> Result<Option<DateTime<Utc>>, InvalidInput> {
        match self {
            Self::Never => Ok(None),
            Self::At(at) => Ok(Some(at)),
            Self::AfterDays(days) => Ok(Some(now + Duration::days(i64::from(days)))),
            Self::WithCard => card_end.map(Some).ok_or(InvalidInput::TokenExpiry(
                "expiring with the card applies to cards only",
            )),
        }
    }
}

/// When new tokens expire unless a request says otherwise.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExpiryPolicy {
    /// `PAYVAULT_TOKEN_TTL_DAYS`; `None`: tokens never expire by default.
    pub default_ttl_days: Option<u32>,
}

impl ExpiryPolicy {
    /// The request's own expiry, or the deployment default.
    pub fn or_default(self, requested: Option<TokenExpiry>) -> TokenExpiry {
        requested.unwrap_or(match self.default_ttl_days {
            Some(days) => TokenExpiry::AfterDays(days),
            None => TokenExpiry::Never,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_outside_the_range_are_refused() {
        assert!(TokenExpiry::after_days(0, "x").is_err());
        assert!(TokenExpiry::after_days(MAX_TTL_DAYS + 1, "x").is_err());
        assert_eq!(
            TokenExpiry::after_days(30, "x").unwrap(),
            TokenExpiry::AfterDays(30)
        );
    }

    #[test]
    fn resolves_against_now_and_the_card() {
        let now = Utc::now();
        let end = now + Duration::days(400);
        assert_eq!(TokenExpiry::Never.resolve(now, Some(end)).unwrap(), None);
        assert_eq!(
            TokenExpiry::AfterDays(2).resolve(now, None).unwrap(),
            Some(now + Duration::days(2))
        );
        assert_eq!(
            TokenExpiry::WithCard.resolve(now, Some(end)).unwrap(),
            Some(end)
        );
        assert_eq!(
            TokenExpiry::WithCard.resolve(now, None).unwrap_err().code(),
            "invalid_token_expiry"
        );
    }

    #[test]
    fn the_policy_applies_only_when_the_request_is_silent() {
        let policy = ExpiryPolicy {
            default_ttl_days: Some(90),
        };
        assert_eq!(policy.or_default(None), TokenExpiry::AfterDays(90));
        assert_eq!(
            policy.or_default(Some(TokenExpiry::Never)),
            TokenExpiry::Never
        );
        assert_eq!(ExpiryPolicy::default().or_default(None), TokenExpiry::Never);
    }
}
