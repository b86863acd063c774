//! Screening recipients: parse each number, render the body, and report
//! what was refused and why. Duplicates are left to the store's unique index,
//! so memory does not grow with the size of an upload.

use crate::domain::{MessageId, PhoneNumber, Region, Template};
use crate::pb;
use crate::store::campaigns::NewRecipient;

/// The most rejections reported back in detail.
pub const MAX_REPORTED_REJECTIONS: usize = 100;

/// Recipients that passed, and the rejections (capped) with their count.
#[derive(Debug, Default)]
pub struct Screened {
    pub accepted: Vec<NewRecipient>,
    pub rejected: Vec<pb::RejectedRecipient>,
    pub rejected_count: i64,
}

/// Screens a chunk whose first recipient has position `first_index` in the
/// whole request, adding to `into`.
pub fn screen(
    template: &Template,
    region: Option<Region>,
    first_index: i64,
    recipients: &[pb::Recipient],
    into: &mut Screened,
) {
    for (offset, recipient) in recipients.iter().enumerate() {
        let checked = PhoneNumber::parse(&recipient.phone, region)
            .map_err(|error| error.to_string())
            .and_then(|to| Ok((to, template.render(&recipient.variables)?)));
        match checked {
            Ok((to, body)) => into.accepted.push(NewRecipient {
                id: MessageId::generate(),
                to,
                body,
            }),
            Err(reason) => {
                into.rejected_count += 1;
                if into.rejected.len() < MAX_REPORTED_REJECTIONS {
                    into.rejected.push(pb::RejectedRecipient {
                        index: first_index + offset as i64,
                        phone: recipient.phone.clone(),
                        reason,
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn recipient(phone: &str, vars: &[(&str, &str)]) -> pb::Recipient {
        pb::Recipient {
            phone: phone.into(),
            variables: vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>(),
        }
    }

    #[test]
    fn each_rejection_names_its_index_and_reason() {
        let template = Template::parse("Hi {{name}}").unwrap();
        let mut screened = Screened::default();
        screen(
            &template,
            None,
            10,
            &[
                recipient("+14155552671", &[("name", "Ada")]),
                recipient("not a number", &[("name", "Bob")]),
                recipient("+14155552672", &[]),
            ],
            &mut screened,
        );
        assert_eq!(screened.accepted.len(), 1);
        assert_eq!(screened.accepted[0].body, "Hi Ada");
        assert_eq!(screened.rejected_count, 2);
        assert_eq!(screened.rejected[0].index, 11);
        assert_eq!(screened.rejected[1].index, 12);
        assert_eq!(screened.rejected[1].reason, "missing variable `name`");
    }
}
