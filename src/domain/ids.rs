//! Identifiers: UUIDv7, time-ordered so that ids sort by creation and index
//! well, and random enough not to be guessed.

use std::fmt;

use uuid::Uuid;

macro_rules! uuid_id {
    ($name:ident, $what:literal) => {
        #[doc = concat!("The id of a ", $what, ": a UUIDv7 in its hyphenated text form.")]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Uuid);

        impl $name {
            /// A fresh, time-ordered id.
            pub fn generate() -> Self {
                Self(Uuid::now_v7())
            }

            /// Parses an id given by a caller; anything but a UUID is refused.
            pub fn parse(text: &str) -> Result<Self, String> {
                Uuid::parse_str(text.trim())
                    .map(Self)
                    .map_err(|_| format!("`{text}` is not a valid {} id (a UUID)", $what))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }
    };
}

uuid_id!(CampaignId, "campaign");
uuid_id!(MessageId, "message");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_text_and_sort_by_creation() {
        let first = CampaignId::generate();
        let second = CampaignId::generate();
        assert_eq!(CampaignId::parse(&first.to_string()).unwrap(), first);
        assert!(first.to_string() < second.to_string());
    }

    #[test]
    fn malformed_ids_are_refused_with_the_input_named() {
        let error = MessageId::parse("nope").unwrap_err();
        assert!(error.contains("`nope`"), "{error}");
    }
}
