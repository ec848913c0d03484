//! Where a problem in hosts.yaml is, for a message that names file:line.
//!
//! While a visitor runs, serde_yaml marks its error with the node's position
//! and nothing more is needed. Problems found later (an unknown `@group`, a
//! cycle, the first of two duplicates) carry the [`NodePath`] to their node
//! instead, and the file is parsed again with a probe that fails on purpose
//! at that node. That is exact where scanning the text for the key would be
//! fooled by flow style, quoting and repeated names.

use std::fmt::{self, Write as _};

use serde::de::{
    self, DeserializeSeed, Deserializer, Error as _, IgnoredAny, MapAccess, SeqAccess, Visitor,
};

use super::InventoryError;

/// One step from a node to a child, to find a node again in the text.
#[derive(Debug, Clone)]
pub(super) enum Step {
    /// The mapping entry with this key.
    Key(&'static str),
    /// The n-th mapping entry.
    Entry(usize),
    /// The n-th sequence element.
    Item(usize),
}

/// The steps from the document's root to one node.
pub(super) type NodePath = Vec<Step>;

/// A problem in the file, in our words.
#[derive(Debug)]
pub(super) struct Problem {
    /// What is wrong, in one line.
    pub(super) message: String,
    /// The node at fault, when serde_yaml's position is not the right one.
    at: Option<NodePath>,
    /// An earlier definition to mention as "also at line N".
    also_at: Option<NodePath>,
}

impl Problem {
    /// A problem at the node being visited.
    pub(super) fn new(message: impl Into<String>) -> Self {
        Problem {
            message: message.into(),
            at: None,
            also_at: None,
        }
    }

    /// The problem is at the node `path` leads to.
    pub(super) fn at(self, path: NodePath) -> Self {
        Problem {
            at: Some(path),
            ..self
        }
    }

    /// The message ends with the line of `path`, an earlier definition.
    pub(super) fn also_at(self, path: NodePath) -> Self {
        Problem {
            also_at: Some(path),
            ..self
        }
    }
}

impl From<String> for Problem {
    fn from(message: String) -> Self {
        Problem::new(message)
    }
}

impl From<&str> for Problem {
    fn from(message: &str) -> Self {
        Problem::new(message)
    }
}

/// Turns a problem into the one-line error, `line` being serde_yaml's.
pub(super) fn report(
    problem: Problem,
    line: Option<usize>,
    text: &str,
    origin: &str,
) -> InventoryError {
    let line = problem.at.as_deref().and_then(|p| locate(text, p)).or(line);
    let mut message = problem.message;
    if let Some(first) = problem.also_at.as_deref().and_then(|p| locate(text, p)) {
        let _ = write!(message, " (also at line {first})");
    }
    InventoryError::Invalid {
        origin: origin.to_owned(),
        line,
        column: None,
        message,
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub(super) fn line_column(text: &str, index: usize) -> (usize, usize) {
    let before = text.get(..index).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, column)
}

/// serde_yaml's message without the position it appends (we print that
/// ourselves).
pub(super) fn yaml_message(error: &serde_yaml::Error) -> String {
    let message = error.to_string();
    match error.location() {
        Some(l) => message.replacen(
            &format!(" at line {} column {}", l.line(), l.column()),
            "",
            1,
        ),
        None => message,
    }
}

/// The line of the node at `path` (keys for `Key`/`Entry`, elements for
/// `Item`): a second parse stops with an error at that node, and serde_yaml
/// marks the error with the node's position.
fn locate(text: &str, path: &[Step]) -> Option<usize> {
    let error = Probe(path)
        .deserialize(serde_yaml::Deserializer::from_str(text))
        .err()?;
    error.location().map(|l| l.line())
}

/// Walks `path`; at its end every `visit_*` (the defaults included) fails.
struct Probe<'p>(&'p [Step]);

const FOUND: &str = "found";

impl<'de> DeserializeSeed<'de> for Probe<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Probe<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(FOUND)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let (target, rest) = match self.0.split_first() {
            None => return Err(A::Error::custom(FOUND)),
            Some((&Step::Item(n), rest)) => (n, rest),
            Some(_) => (usize::MAX, &[][..]),
        };
        let mut i = 0;
        loop {
            let more = if i == target {
                seq.next_element_seed(Probe(rest))?.is_some()
            } else {
                seq.next_element::<IgnoredAny>()?.is_some()
            };
            if !more {
                return Ok(());
            }
            i += 1;
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Some((step, rest)) = self.0.split_first() else {
            return Err(A::Error::custom(FOUND));
        };
        let mut index = 0;
        while let Some(hit) = map.next_key_seed(ProbeKey {
            step,
            index,
            last: rest.is_empty(),
        })? {
            if hit {
                map.next_value_seed(Probe(rest))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
            index += 1;
        }
        Ok(())
    }
}

/// A key on the probe's path: tells whether it is the step's key, and fails
/// there when it is the last step.
struct ProbeKey<'p> {
    step: &'p Step,
    index: usize,
    last: bool,
}

impl<'de> DeserializeSeed<'de> for ProbeKey<'_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for ProbeKey<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<bool, E> {
        let hit = match self.step {
            Step::Key(name) => key == *name,
            Step::Entry(n) => self.index == *n,
            Step::Item(_) => false,
        };
        if hit && self.last {
            return Err(E::custom(FOUND));
        }
        Ok(hit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_finds_the_node_not_the_first_matching_text() {
        let text = "hosts: [groups, b]\ngroups: {g: {members: [a,\n  \"@h\"]}}\n";
        assert_eq!(locate(text, &[Step::Key("groups")]), Some(2));
        assert_eq!(locate(text, &[Step::Key("hosts"), Step::Item(1)]), Some(1));
        let member = [
            Step::Key("groups"),
            Step::Entry(0),
            Step::Key("members"),
            Step::Item(1),
        ];
        assert_eq!(locate(text, &member), Some(3));
        assert_eq!(locate(text, &[Step::Key("nowhere")]), None);
    }

    #[test]
    fn line_column_counts_characters() {
        assert_eq!(line_column("ab\ncd\u{e9} f", 8), (2, 5));
        assert_eq!(line_column("ab", 0), (1, 1));
    }
}
