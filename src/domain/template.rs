//! Message templates: a body with `{{name}}` placeholders, filled per recipient.

use std::collections::{BTreeSet, HashMap};

/// The longest body a provider accepts, in characters.
pub const MAX_BODY_CHARS: usize = 1600;

/// A parsed body: literal text and placeholders, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Variable(String),
}

impl Template {
    /// Parses a body. Placeholder names are letters, digits and `_`, with
    /// optional spaces inside the braces (`{{ first_name }}`).
    pub fn parse(body: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = body;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let after = &rest[open + 2..];
            let close = after
                .find("}}")
                .ok_or_else(|| "a `{{` placeholder is never closed with `}}`".to_owned())?;
            let name = after[..close].trim();
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!(
                    "placeholder `{{{{{}}}}}` must be a name of letters, digits and `_`",
                    &after[..close]
                ));
            }
            parts.push(Part::Variable(name.to_owned()));
            rest = &after[close + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Self { parts })
    }

    /// The placeholder names the body uses.
    pub fn variables(&self) -> BTreeSet<&str> {
        self.parts
            .iter()
            .filter_map(|part| match part {
                Part::Variable(name) => Some(name.as_str()),
                Part::Text(_) => None,
            })
            .collect()
    }

    /// Fills the placeholders; fails naming the first variable missing, or if
    /// the result is longer than a provider accepts.
    pub fn render(&self, values: &HashMap<String, String>) -> Result<String, String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Variable(name) => match values.get(name) {
                    Some(value) => out.push_str(value),
                    None => return Err(format!("missing variable `{name}`")),
                },
            }
        }
        let chars = out.chars().count();
        if chars > MAX_BODY_CHARS {
            return Err(format!(
                "rendered body is {chars} characters, more than {MAX_BODY_CHARS}"
            ));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn placeholders_are_filled_from_the_recipients_values() {
        let template = Template::parse("Hi {{name}}, code {{ code }}!").unwrap();
        let body = template
            .render(&values(&[("name", "Ada"), ("code", "42")]))
            .unwrap();
        assert_eq!(body, "Hi Ada, code 42!");
        assert_eq!(
            template.variables().into_iter().collect::<Vec<_>>(),
            ["code", "name"]
        );
    }

    #[test]
    fn a_missing_value_names_the_variable() {
        let template = Template::parse("Hi {{name}}").unwrap();
        assert_eq!(
            template.render(&HashMap::new()),
            Err("missing variable `name`".into())
        );
    }

    #[test]
    fn malformed_placeholders_are_refused() {
        assert!(Template::parse("Hi {{name").is_err());
        assert!(Template::parse("Hi {{}}").is_err());
        assert!(Template::parse("Hi {{a-b}}").is_err());
    }

    #[test]
    fn rendered_bodies_over_the_limit_are_refused() {
        let template = Template::parse("{{x}}").unwrap();
        let long = "a".repeat(MAX_BODY_CHARS + 1);
        assert!(template.render(&values(&[("x", &long)])).is_err());
    }
}
