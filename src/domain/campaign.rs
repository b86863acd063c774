//! Campaigns: their states and legal transitions, their counts, and the rules
//! a new campaign must satisfy.

use std::fmt;

use super::{FieldViolation, Millis, Template, template::MAX_BODY_CHARS};

/// Where a campaign is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CampaignState {
    Draft,
    Scheduled,
    Running,
    Paused,
    Completed,
    Cancelled,
}

/// A lifecycle request made by a caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Start,
    Pause,
    Resume,
    Cancel,
}

impl CampaignState {
    pub const ALL: [CampaignState; 6] = [
        Self::Draft,
        Self::Scheduled,
        Self::Running,
        Self::Paused,
        Self::Completed,
        Self::Cancelled,
    ];

    /// The form stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Draft => "draft",
            Self::Scheduled => "scheduled",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Completed => "completed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == text)
    }

    /// Whether the campaign can never change again.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Cancelled)
    }

    /// The state `transition` leads to from `self`, or `None` if it is illegal.
    /// `scheduled_in_future` tells whether a start should wait for its time.
    pub fn after(self, transition: Transition, scheduled_in_future: bool) -> Option<Self> {
        use CampaignState::*;
        match (self, transition) {
            (Draft, Transition::Start) if scheduled_in_future => Some(Scheduled),
            (Draft, Transition::Start) => Some(Running),
            (Running, Transition::Pause) => Some(Paused),
            (Paused, Transition::Resume) => Some(Running),
            (Draft | Scheduled | Running | Paused, Transition::Cancel) => Some(Cancelled),
            _ => None,
        }
    }
}

impl fmt::Display for CampaignState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_str().to_ascii_uppercase())
    }
}

impl fmt::Display for Transition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Start => "start",
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Cancel => "cancel",
        })
    }
}

/// A campaign's counts as stored on its row. `processed` and `queued` are
/// derived, so they can never disagree with the stored ones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub total: i64,
    pub sent: i64,
    pub failed: i64,
    pub cancelled: i64,
}

impl Counts {
    pub fn processed(&self) -> i64 {
        self.sent + self.failed
    }

    /// Messages not finished yet: waiting, retrying or in flight.
    pub fn queued(&self) -> i64 {
        self.total - self.processed() - self.cancelled
    }

    /// Whether every message has reached a terminal state.
    pub fn is_finished(&self) -> bool {
        self.total > 0 && self.queued() == 0
    }
}

/// Who a message is sent from: an E.164 number, a short code or an
/// alphanumeric sender id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sender(String);

impl Sender {
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let digits = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
        let valid = if let Some(number) = text.strip_prefix('+') {
            digits(number) && (8..=15).contains(&number.len())
        } else if digits(text) {
            (3..=8).contains(&text.len())
        } else {
            (1..=11).contains(&text.chars().count())
                && text.chars().all(|c| c.is_ascii_alphanumeric() || c == ' ')
                && text.chars().any(|c| c.is_ascii_alphabetic())
        };
        if valid {
            Ok(Self(text.to_owned()))
        } else if text.is_empty() {
            Err("sender is required".into())
        } else {
            Err(format!(
                "`{text}` is not a sender: use an E.164 number, a 3 to 8 digit short code, \
                 or 1 to 11 letters, digits and spaces"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Wraps a sender read back from the store, where only valid ones are written.
    pub fn from_stored(text: String) -> Self {
        Self(text)
    }
}

/// The longest campaign name, in characters.
pub const MAX_NAME_CHARS: usize = 200;

/// The fields of a new campaign, each checked.
#[derive(Debug, Clone)]
pub struct CampaignDraft {
    pub name: String,
    pub body: String,
    pub template: Template,
    pub sender: Sender,
    pub scheduled_at: Option<Millis>,
}

impl CampaignDraft {
    /// Checks every field, reporting all violations at once.
    pub fn parse(
        name: &str,
        body: &str,
        sender: &str,
        scheduled_at: Option<Millis>,
    ) -> Result<Self, Vec<FieldViolation>> {
        let mut violations = Vec::new();

        let name = name.trim();
        if name.is_empty() {
            violations.push(FieldViolation::new("name", "name is required"));
        } else if name.chars().count() > MAX_NAME_CHARS {
            violations.push(FieldViolation::new(
                "name",
                format!("name is longer than {MAX_NAME_CHARS} characters"),
            ));
        }

        let template = match check_body(body) {
            Ok(template) => Some(template),
            Err(description) => {
                violations.push(FieldViolation::new("body", description));
                None
            }
        };
        let sender = Sender::parse(sender)
            .map_err(|description| violations.push(FieldViolation::new("sender", description)))
            .ok();

        match (template, sender) {
            (Some(template), Some(sender)) if violations.is_empty() => Ok(Self {
                name: name.to_owned(),
                body: body.to_owned(),
                template,
                sender,
                scheduled_at,
            }),
            _ => Err(violations),
        }
    }
}

/// Checks a body's length and placeholders.
pub fn check_body(body: &str) -> Result<Template, String> {
    let chars = body.chars().count();
    if body.trim().is_empty() {
        return Err("body is required".into());
    }
    if chars > MAX_BODY_CHARS {
        return Err(format!(
            "body is {chars} characters, more than {MAX_BODY_CHARS}"
        ));
    }
    Template::parse(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_machine_allows_exactly_the_documented_transitions() {
        use CampaignState::*;
        use Transition::*;
        let legal = [
            (Draft, Start, false, Running),
            (Draft, Start, true, Scheduled),
            (Running, Pause, false, Paused),
            (Paused, Resume, false, Running),
            (Draft, Cancel, false, Cancelled),
            (Scheduled, Cancel, false, Cancelled),
            (Running, Cancel, false, Cancelled),
            (Paused, Cancel, false, Cancelled),
        ];
        for (from, transition, future, _) in legal {
            assert!(
                from.after(transition, future).is_some(),
                "{from} {transition}"
            );
        }
        assert_eq!(Running.after(Pause, false), Some(Paused));

        for from in CampaignState::ALL {
            for transition in [Start, Pause, Resume, Cancel] {
                let allowed = legal
                    .iter()
                    .any(|(f, t, _, _)| *f == from && *t == transition);
                assert_eq!(
                    from.after(transition, false).is_some(),
                    allowed,
                    "{from} {transition}"
                );
            }
        }
    }

    #[test]
    fn states_round_trip_through_their_stored_form() {
        for state in CampaignState::ALL {
            assert_eq!(CampaignState::parse(state.as_str()), Some(state));
        }
    }

    #[test]
    fn counts_derive_processed_and_queued() {
        let counts = Counts {
            total: 10,
            sent: 4,
            failed: 2,
            cancelled: 1,
        };
        assert_eq!(counts.processed(), 6);
        assert_eq!(counts.queued(), 3);
        assert!(!counts.is_finished());
        assert!(
            Counts {
                total: 3,
                sent: 2,
                failed: 0,
                cancelled: 1
            }
            .is_finished()
        );
    }

    #[test]
    fn senders_are_numbers_short_codes_or_alphanumeric_ids() {
        for good in ["+14155550100", "12345", "Broadside", "ACME 2"] {
            assert!(Sender::parse(good).is_ok(), "{good}");
        }
        for bad in ["", "12", "+12", "TwelveLetters", "!!", "123456789"] {
            assert!(Sender::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_draft_reports_every_bad_field_at_once() {
        let violations = CampaignDraft::parse("", "", "!", None).unwrap_err();
        let fields: Vec<_> = violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["name", "body", "sender"]);
    }
}
