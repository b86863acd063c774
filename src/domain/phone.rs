//! Phone numbers, parsed with a port of libphonenumber and kept in E.164.

use std::fmt;

use phonenumber::country;

/// A region whose national number format is accepted, e.g. `US`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region(country::Id);

impl Region {
    /// Parses an ISO 3166-1 alpha-2 code such as `US` or `GB`.
    pub fn parse(code: &str) -> Result<Self, String> {
        code.trim()
            .to_ascii_uppercase()
            .parse::<country::Id>()
            .map(Self)
            .map_err(|_| format!("`{code}` is not an ISO 3166-1 alpha-2 region code"))
    }
}

/// A valid phone number in E.164 form (`+14155552671`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PhoneNumber(String);

/// Why a phone number was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhoneError {
    #[error("phone number is empty")]
    Empty,
    #[error("not a phone number")]
    Unparseable,
    #[error("national format needs a country code (e.g. +1...) since no default region is set")]
    NeedsCountryCode,
    #[error("not a valid phone number for its region")]
    Invalid,
}

impl PhoneNumber {
    /// Parses `input`; national formats are accepted only with a `default_region`.
    pub fn parse(input: &str, default_region: Option<Region>) -> Result<Self, PhoneError> {
        let input = input.trim();
        if input.is_empty() {
            return Err(PhoneError::Empty);
        }
        if !input.starts_with('+') && default_region.is_none() {
            return Err(PhoneError::NeedsCountryCode);
        }

        let parsed = phonenumber::parse(default_region.map(|r| r.0), input)
            .map_err(|_| PhoneError::Unparseable)?;
        if !phonenumber::is_valid(&parsed) {
            return Err(PhoneError::Invalid);
        }
        Ok(Self(
            parsed.format().mode(phonenumber::Mode::E164).to_string(),
        ))
    }

    /// Wraps a number read back from the store, where only E.164 is written.
    pub fn from_stored(e164: String) -> Self {
        Self(e164)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn international_numbers_are_normalised_to_e164() {
        let number = PhoneNumber::parse("+1 (415) 555-2671", None).unwrap();
        assert_eq!(number.as_str(), "+14155552671");
    }

    #[test]
    fn national_numbers_need_a_default_region() {
        assert_eq!(
            PhoneNumber::parse("(415) 555-2671", None),
            Err(PhoneError::NeedsCountryCode)
        );
        let us = Region::parse("us").unwrap();
        let number = PhoneNumber::parse("(415) 555-2671", Some(us)).unwrap();
        assert_eq!(number.as_str(), "+14155552671");
    }

    #[test]
    fn invalid_numbers_are_refused() {
        assert_eq!(PhoneNumber::parse("+1 555", None), Err(PhoneError::Invalid));
        assert_eq!(PhoneNumber::parse("   ", None), Err(PhoneError::Empty));
        assert!(PhoneNumber::parse("+hello", None).is_err());
    }

    #[test]
    fn unknown_regions_are_refused() {
        assert!(Region::parse("XX").is_err());
    }
}
