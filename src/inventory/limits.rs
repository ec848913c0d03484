//! Limits checked on inventory text before any parser sees it.
//!
//! A YAML parser's time and memory grow with nesting: a file of 200 KB of
//! nested brackets took half a minute to be refused. No inventory is deep
//! or huge, so text beyond these limits is refused at once, naming the
//! line where the limit is crossed.

use std::path::Path;

use super::InventoryError;

/// The largest inventory file read.
pub(super) const MAX_BYTES: usize = 64 << 20;

/// The deepest nesting of brackets, braces or indentation levels.
pub(super) const MAX_DEPTH: usize = 64;

/// Refuses a file too big to be an inventory before reading it (a file
/// that cannot be looked at is left to the reading to report).
pub(super) fn check_size(path: &Path, origin: &str) -> Result<(), InventoryError> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() && meta.len() > MAX_BYTES as u64 => {
            Err(too_big(meta.len(), origin))
        }
        _ => Ok(()),
    }
}

fn too_big(len: u64, origin: &str) -> InventoryError {
    InventoryError::Invalid {
        origin: origin.to_owned(),
        line: None,
        column: None,
        message: format!("{len} bytes: larger than any inventory (limit {MAX_BYTES})"),
    }
}

/// Refuses text that is too big or nested too deep.
pub(super) fn check(text: &str, origin: &str) -> Result<(), InventoryError> {
    let fail = |line: Option<usize>, message: String| InventoryError::Invalid {
        origin: origin.to_owned(),
        line,
        column: None,
        message,
    };
    if text.len() > MAX_BYTES {
        return Err(too_big(text.len() as u64, origin));
    }
    let mut flow = 0usize;
    // Indentation of the open block levels, outermost first.
    let mut blocks: Vec<usize> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let content = line.trim_start_matches([' ', '-']);
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        let indent = line.len() - content.len();
        while blocks.last().is_some_and(|&b| b >= indent) {
            blocks.pop();
        }
        blocks.push(indent);
        // `- - - x` opens one level per dash.
        let dashes = line[..indent].matches('-').count();
        let mut quote = None;
        for c in content.chars() {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, '"' | '\'') => quote = Some(c),
                (None, '#') => break,
                (None, '[' | '{') => flow += 1,
                (None, ']' | '}') => flow = flow.saturating_sub(1),
                _ => {}
            }
            if flow > MAX_DEPTH {
                break;
            }
        }
        if blocks.len() + dashes + flow > MAX_DEPTH {
            return Err(fail(
                Some(n + 1),
                format!("nested more than {MAX_DEPTH} levels deep: not an inventory"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_nesting_is_refused_at_once() {
        let deep = format!("hosts: {}a{}", "[".repeat(100_000), "]".repeat(100_000));
        let error = check(&deep, "h.yaml").unwrap_err().to_string();
        assert_eq!(
            error,
            "h.yaml:1: nested more than 64 levels deep: not an inventory"
        );
        let dashes = format!("{}a\n", "- ".repeat(100));
        assert!(check(&dashes, "h.yaml").is_err());
        let indented: String = (0..100)
            .map(|i| format!("{}k{i}:\n", " ".repeat(i)))
            .collect();
        assert!(check(&indented, "h.yaml").is_err());
        let normal = "hosts:\n  a:\n    vars: {A: [1, {b: c}]}\n";
        check(normal, "h.yaml").unwrap();
    }
}
