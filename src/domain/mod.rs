//! Pure types and rules: ids, phone numbers, templates, states, counts and the
//! retry policy. Nothing here performs I/O or imports another Broadside module,
//! so every rule can be tested in isolation.

pub mod campaign;
pub mod ids;
pub mod message;
pub mod outcome;
pub mod phone;
pub mod template;
pub mod time;

pub use campaign::{CampaignDraft, CampaignState, Counts, Sender, Transition};
pub use ids::{CampaignId, MessageId};
pub use message::MessageState;
pub use outcome::{Delivery, Disposition, RetryPolicy, SendOutcome};
pub use phone::{PhoneError, PhoneNumber, Region};
pub use template::Template;
pub use time::Millis;

/// The tenant every request belongs to until authentication assigns others.
pub const DEFAULT_TENANT: &str = "default";

/// One invalid input field, as reported to the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// The field's path in the request, e.g. `recipients[3].phone`.
    pub field: String,
    /// What is wrong with it.
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}
