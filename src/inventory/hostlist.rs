//! Host range notation as pdsh and ClusterShell users know it.
//!
//! Fleets are named in series (`node001` … `node120`, `10.0.1.1` … `10.0.1.250`),
//! so every place that takes host names accepts the compact form
//! `node[001-120]`, and output folds long lists back into it. Expansion is
//! capped at [`MAX_NAMES`] names so that a typo such as `node[1-99999999]`
//! fails at once instead of exhausting memory.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};

/// The most names a single pattern may expand to.
pub const MAX_NAMES: usize = 1_000_000;

/// Why a host pattern could not be expanded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad host range {pattern:?}: {fault}")]
pub struct RangeError {
    /// The comma item at fault (the whole list for an empty item).
    pub pattern: String,
    /// What is wrong with it.
    pub fault: RangeFault,
}

/// What is wrong with a host pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeFault {
    /// An empty item, as in `a,,b`.
    #[error("empty name")]
    EmptyName,
    /// A `[` without `]`, or the reverse.
    #[error("unbalanced brackets")]
    Unbalanced,
    /// A `[` inside brackets.
    #[error("nested brackets")]
    Nested,
    /// Nothing, or a missing bound, between commas in brackets.
    #[error("empty range")]
    EmptyRange,
    /// A range whose lower bound is above its upper bound.
    #[error("reversed range")]
    Reversed,
    /// A bound that is not made of digits.
    #[error("{0:?} is not a number")]
    NonNumeric(String),
    /// A bound that does not fit in 64 bits.
    #[error("{0} is too large")]
    NumberTooLarge(String),
    /// A step of 0, as in `[1-9/0]`.
    #[error("step must be at least 1")]
    ZeroStep,
    /// More than [`MAX_NAMES`] names.
    #[error("expands to more than {MAX_NAMES} names")]
    TooMany,
}

/// Expands a host pattern into names, in order.
///
/// Bracket groups hold comma-separated numbers and `lo-hi` ranges, each
/// range optionally with a step (`lo-hi/step`, as in ClusterShell); a bound
/// written with a leading zero sets the width of every number it produces.
/// Several groups give their cartesian product, leftmost varying slowest.
/// Top-level commas separate independent patterns (so that the output of
/// [`fold`] expands again); duplicates are kept.
pub fn expand(pattern: &str) -> Result<Vec<String>, RangeError> {
    let mut items = Vec::new();
    let mut total = 0usize;
    for item in split_items(pattern) {
        let item = item.trim();
        let fail = |fault| RangeError {
            pattern: item.to_owned(),
            fault,
        };
        if item.is_empty() {
            return Err(RangeError {
                pattern: pattern.to_owned(),
                fault: RangeFault::EmptyName,
            });
        }
        let parsed = parse_item(item).map_err(fail)?;
        total = total.saturating_add(parsed.count());
        if total > MAX_NAMES {
            return Err(fail(RangeFault::TooMany));
        }
        items.push(parsed);
    }
    let mut names = Vec::with_capacity(total);
    for item in &items {
        item.expand_into(&mut names);
    }
    Ok(names)
}

/// Splits a comma list at the commas outside brackets: `a,node[1,3],b` gives
/// three items. Items are trimmed and empty items dropped, which suits lists
/// typed on a command line (`-w "a, b,"`).
pub fn split_list(list: &str) -> Vec<String> {
    split_items(list)
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Folds names back into range notation for display.
///
/// Names that differ only in their last run of digits share a bracket group
/// when their numbers can share one zero padding (`n09,n10` → `n[09-10]`, but
/// `n1,n01` stay apart). Duplicates are dropped; groups appear in order of
/// first appearance, numbers in numeric order, and a group of one is shown
/// plain. `expand(&fold(names))` gives back every name.
pub fn fold(names: &[String]) -> String {
    // Only the first of repeated names; each name is split again where it
    // is needed rather than kept split, so that a million names fold in
    // little more memory than they take.
    let mut seen = HashSet::with_capacity(names.len());
    let unique: Vec<&str> = names
        .iter()
        .map(String::as_str)
        .filter(|name| seen.insert(*name))
        .collect();
    drop(seen);

    // Zero-padded numbers fix their width; others join the widest padded
    // class they fit in, so that `n09,n10` fold together.
    let mut padded: HashMap<(&str, &str), Vec<usize>> = HashMap::new();
    for numbered in unique.iter().filter_map(|name| Numbered::split(name)) {
        if numbered.is_padded() {
            let widths = padded
                .entry((numbered.prefix, numbered.suffix))
                .or_default();
            if !widths.contains(&numbered.digits.len()) {
                widths.push(numbered.digits.len());
            }
        }
    }

    let mut groups: Vec<Group<'_>> = Vec::new();
    let mut index: HashMap<GroupKey<'_>, usize> = HashMap::new();
    for name in unique {
        let (key, number) = match Numbered::split(name) {
            None => (GroupKey::Plain(name), None),
            Some(n) => {
                let width = if n.is_padded() {
                    n.digits.len()
                } else {
                    padded
                        .get(&(n.prefix, n.suffix))
                        .and_then(|widths| widths.iter().filter(|&&w| w <= n.digits.len()).max())
                        .copied()
                        .unwrap_or(0)
                };
                (GroupKey::Numbered(n.prefix, n.suffix, width), Some(n.value))
            }
        };
        let slot = match index.entry(key) {
            Entry::Occupied(slot) => *slot.get(),
            Entry::Vacant(slot) => {
                groups.push(Group {
                    first: name,
                    key,
                    numbers: Vec::new(),
                });
                *slot.insert(groups.len() - 1)
            }
        };
        groups[slot].numbers.extend(number);
    }

    groups
        .iter_mut()
        .map(Group::render)
        .collect::<Vec<_>>()
        .join(",")
}

/// Splits at commas outside brackets, keeping empty items.
fn split_items(list: &str) -> impl Iterator<Item = &str> {
    let mut depth = 0usize;
    list.split(move |c| {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        c == ',' && depth == 0
    })
}

/// One comma item of a pattern: literal text and bracket groups.
struct Item {
    segments: Vec<Segment>,
}

enum Segment {
    Text(String),
    Ranges(Vec<Range>),
}

/// `lo-hi/step` inclusive, numbers printed `width` digits wide (0: unpadded).
struct Range {
    lo: u64,
    hi: u64,
    step: u64,
    width: usize,
}

impl Range {
    fn len(&self) -> usize {
        usize::try_from((self.hi - self.lo) / self.step)
            .unwrap_or(usize::MAX)
            .saturating_add(1)
    }

    fn numbers(&self) -> impl Iterator<Item = u64> + '_ {
        // `step` fits in usize: it is at most `hi - lo` ≤ the capped count.
        (self.lo..=self.hi).step_by(usize::try_from(self.step).unwrap_or(usize::MAX))
    }
}

fn parse_item(item: &str) -> Result<Item, RangeFault> {
    let mut segments = Vec::new();
    let mut rest = item;
    while !rest.is_empty() {
        let open = rest.find(['[', ']']).unwrap_or(rest.len());
        if open > 0 {
            segments.push(Segment::Text(rest[..open].to_owned()));
        }
        rest = &rest[open..];
        if rest.starts_with(']') {
            return Err(RangeFault::Unbalanced);
        }
        if let Some(inner) = rest.strip_prefix('[') {
            let close = inner.find(['[', ']']).ok_or(RangeFault::Unbalanced)?;
            if inner[close..].starts_with('[') {
                return Err(RangeFault::Nested);
            }
            let ranges = inner[..close]
                .split(',')
                .map(parse_range)
                .collect::<Result<_, _>>()?;
            segments.push(Segment::Ranges(ranges));
            rest = &inner[close + 1..];
        }
    }
    Ok(Item { segments })
}

fn parse_range(part: &str) -> Result<Range, RangeFault> {
    let (part, step_text) = match part.split_once('/') {
        Some((range, step)) if range.contains('-') => (range, Some(step)),
        Some(_) => return Err(RangeFault::EmptyRange),
        None => (part, None),
    };
    let (lo_text, hi_text) = part.split_once('-').unwrap_or((part, part));
    if lo_text.is_empty() || hi_text.is_empty() {
        return Err(RangeFault::EmptyRange);
    }
    let number = |bound: &str| -> Result<u64, RangeFault> {
        if !bound.bytes().all(|b| b.is_ascii_digit()) {
            return Err(RangeFault::NonNumeric(bound.to_owned()));
        }
        bound
            .parse()
            .map_err(|_| RangeFault::NumberTooLarge(bound.to_owned()))
    };
    let (lo, hi) = (number(lo_text)?, number(hi_text)?);
    if lo > hi {
        return Err(RangeFault::Reversed);
    }
    let step = match step_text {
        None => 1,
        Some(text) => match number(text)? {
            0 => return Err(RangeFault::ZeroStep),
            step => step,
        },
    };
    let width = if lo_text.len() > 1 && lo_text.starts_with('0') {
        lo_text.len()
    } else {
        0
    };
    Ok(Range {
        lo,
        hi,
        step,
        width,
    })
}

impl Item {
    /// How many names this item expands to (saturating).
    fn count(&self) -> usize {
        self.segments
            .iter()
            .map(|segment| match segment {
                Segment::Text(_) => 1,
                Segment::Ranges(ranges) => ranges
                    .iter()
                    .fold(0usize, |sum, range| sum.saturating_add(range.len())),
            })
            .fold(1usize, usize::saturating_mul)
    }

    fn expand_into(&self, names: &mut Vec<String>) {
        let mut partial = vec![String::new()];
        for segment in &self.segments {
            match segment {
                Segment::Text(text) => partial.iter_mut().for_each(|name| name.push_str(text)),
                Segment::Ranges(ranges) => {
                    partial = partial
                        .iter()
                        .flat_map(|prefix| {
                            ranges.iter().flat_map(move |range| {
                                range.numbers().map(move |n| {
                                    format!("{prefix}{n:0width$}", width = range.width)
                                })
                            })
                        })
                        .collect();
                }
            }
        }
        names.append(&mut partial);
    }
}

/// A name split around its last run of digits.
struct Numbered<'a> {
    prefix: &'a str,
    digits: &'a str,
    suffix: &'a str,
    value: u64,
}

impl<'a> Numbered<'a> {
    fn split(name: &'a str) -> Option<Self> {
        let end = name.rfind(|c: char| c.is_ascii_digit())? + 1;
        let start = name[..end]
            .rfind(|c: char| !c.is_ascii_digit())
            .map_or(0, |i| i + 1);
        let digits = &name[start..end];
        Some(Numbered {
            prefix: &name[..start],
            digits,
            suffix: &name[end..],
            value: digits.parse().ok()?,
        })
    }

    fn is_padded(&self) -> bool {
        self.digits.len() > 1 && self.digits.starts_with('0')
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum GroupKey<'a> {
    /// A name without a foldable number.
    Plain(&'a str),
    /// Prefix, suffix and zero-padding width (0: unpadded).
    Numbered(&'a str, &'a str, usize),
}

struct Group<'a> {
    first: &'a str,
    key: GroupKey<'a>,
    numbers: Vec<u64>,
}

impl Group<'_> {
    fn render(&mut self) -> String {
        let GroupKey::Numbered(prefix, suffix, width) = self.key else {
            return self.first.to_owned();
        };
        if self.numbers.len() < 2 {
            return self.first.to_owned();
        }
        self.numbers.sort_unstable();
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for &n in &self.numbers {
            match runs.last_mut() {
                Some((_, hi)) if hi.checked_add(1) == Some(n) => *hi = n,
                _ => runs.push((n, n)),
            }
        }
        let ranges: Vec<String> = runs
            .iter()
            .map(|&(lo, hi)| {
                if lo == hi {
                    format!("{lo:0width$}")
                } else {
                    format!("{lo:0width$}-{hi:0width$}")
                }
            })
            .collect();
        format!("{prefix}[{}]{suffix}", ranges.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(names: &[&str]) -> Vec<String> {
        names.iter().map(|&s| s.to_owned()).collect()
    }

    fn expanded(pattern: &str) -> Vec<String> {
        expand(pattern).unwrap_or_else(|e| panic!("{pattern}: {e}"))
    }

    fn error(pattern: &str) -> String {
        match expand(pattern) {
            Ok(names) => panic!("{pattern} expanded to {names:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn plain_names_pass_through() {
        assert_eq!(expanded("db1"), ["db1"]);
        assert_eq!(expanded("web.example.com"), ["web.example.com"]);
        assert_eq!(expanded("  db1  "), ["db1"]);
    }

    #[test]
    fn zero_padding_follows_the_lower_bound() {
        let names = expanded("node[001-120]");
        assert_eq!(names.len(), 120);
        assert_eq!(names[..3], ["node001", "node002", "node003"]);
        assert_eq!(names[99], "node100");
        assert_eq!(names[119], "node120");
        assert_eq!(expanded("n[08-10]"), ["n08", "n09", "n10"]);
        assert_eq!(expanded("n[8-10]"), ["n8", "n9", "n10"]);
        assert_eq!(expanded("n[0-2]"), ["n0", "n1", "n2"]);
        assert_eq!(expanded("n[98-101]"), ["n98", "n99", "n100", "n101"]);
        assert_eq!(expanded("n[098-101]"), ["n098", "n099", "n100", "n101"]);
        assert_eq!(expanded("n[007]"), ["n007"]);
    }

    #[test]
    fn lists_inside_brackets() {
        assert_eq!(
            expanded("node[1,3,7-9]"),
            ["node1", "node3", "node7", "node8", "node9"]
        );
        assert_eq!(expanded("n[01,3,010-011]"), ["n01", "n3", "n010", "n011"]);
    }

    #[test]
    fn several_groups_give_the_cartesian_product_in_order() {
        let names = expanded("10.0.[1-2].[1-250]");
        assert_eq!(names.len(), 500);
        assert_eq!(names[0], "10.0.1.1");
        assert_eq!(names[249], "10.0.1.250");
        assert_eq!(names[250], "10.0.2.1");
        assert_eq!(names[499], "10.0.2.250");
        assert_eq!(
            expanded("rack[1-2]-node[01-03]"),
            [
                "rack1-node01",
                "rack1-node02",
                "rack1-node03",
                "rack2-node01",
                "rack2-node02",
                "rack2-node03"
            ]
        );
        assert_eq!(expanded("[1-2]x"), ["1x", "2x"]);
    }

    #[test]
    fn top_level_commas_separate_patterns() {
        assert_eq!(expanded("a,node[1,3],b"), ["a", "node1", "node3", "b"]);
        assert_eq!(expanded("a, a"), ["a", "a"]);
    }

    #[test]
    fn malformed_patterns_are_rejected() {
        assert_eq!(
            error("node[1-3"),
            r#"bad host range "node[1-3": unbalanced brackets"#
        );
        assert_eq!(
            error("node1-3]"),
            r#"bad host range "node1-3]": unbalanced brackets"#
        );
        assert_eq!(
            error("node[1]]"),
            r#"bad host range "node[1]]": unbalanced brackets"#
        );
        assert_eq!(error("node[]"), r#"bad host range "node[]": empty range"#);
        assert_eq!(
            error("node[1,,2]"),
            r#"bad host range "node[1,,2]": empty range"#
        );
        assert_eq!(
            error("node[1-]"),
            r#"bad host range "node[1-]": empty range"#
        );
        assert_eq!(
            error("node[-1]"),
            r#"bad host range "node[-1]": empty range"#
        );
        assert_eq!(
            error("node[5-1]"),
            r#"bad host range "node[5-1]": reversed range"#
        );
        assert_eq!(
            error("node[a-c]"),
            r#"bad host range "node[a-c]": "a" is not a number"#
        );
        assert_eq!(
            error("node[1-2-3]"),
            r#"bad host range "node[1-2-3]": "2-3" is not a number"#
        );
        assert_eq!(
            error("node[1[2]]"),
            r#"bad host range "node[1[2]]": nested brackets"#
        );
        assert_eq!(
            error("n[99999999999999999999]"),
            r#"bad host range "n[99999999999999999999]": 99999999999999999999 is too large"#
        );
        assert_eq!(error(""), r#"bad host range "": empty name"#);
        assert_eq!(error("a,,b"), r#"bad host range "a,,b": empty name"#);
        assert_eq!(error("a,"), r#"bad host range "a,": empty name"#);
        assert_eq!(
            error("ok,n[3-1]"),
            r#"bad host range "n[3-1]": reversed range"#
        );
    }

    #[test]
    fn expansion_is_capped() {
        assert_eq!(expanded("n[1-1000000]").len(), MAX_NAMES);
        assert_eq!(
            error("n[1-1000001]"),
            r#"bad host range "n[1-1000001]": expands to more than 1000000 names"#
        );
        assert_eq!(
            error("n[1-1000][1-1001]"),
            r#"bad host range "n[1-1000][1-1001]": expands to more than 1000000 names"#
        );
        assert_eq!(
            error("n[0-18446744073709551615]"),
            r#"bad host range "n[0-18446744073709551615]": expands to more than 1000000 names"#
        );
        // The cap is on the whole list, reported at the item that crosses it.
        assert_eq!(
            error("a[1-600000],b[1-600000]"),
            r#"bad host range "b[1-600000]": expands to more than 1000000 names"#
        );
    }

    #[test]
    fn split_list_ignores_commas_in_brackets() {
        assert_eq!(split_list("a,node[1,3],b"), ["a", "node[1,3]", "b"]);
        assert_eq!(split_list(" a , ,b,"), ["a", "b"]);
        assert_eq!(split_list("x[1-2,5],y[3,4]z"), ["x[1-2,5]", "y[3,4]z"]);
        assert_eq!(split_list("!web[1,2],@db"), ["!web[1,2]", "@db"]);
        assert_eq!(split_list(""), Vec::<String>::new());
    }

    #[test]
    fn fold_groups_by_the_last_number() {
        let names = strings(&["node001", "node002", "node003", "node007"]);
        assert_eq!(fold(&names), "node[001-003,007]");
        let ips: Vec<String> = (1..=250).map(|i| format!("127.0.1.{i}")).collect();
        assert_eq!(fold(&ips), "127.0.1.[1-250]");
        assert_eq!(
            fold(&strings(&["rack1-node01", "rack1-node02", "rack2-node01"])),
            "rack1-node[01-02],rack2-node01"
        );
        assert_eq!(fold(&strings(&["a1b", "a2b", "a3c"])), "a[1-2]b,a3c");
    }

    #[test]
    fn fold_respects_padding() {
        assert_eq!(fold(&strings(&["n9", "n10"])), "n[9-10]");
        assert_eq!(fold(&strings(&["n09", "n10"])), "n[09-10]");
        assert_eq!(fold(&strings(&["n10", "n09"])), "n[09-10]");
        assert_eq!(fold(&strings(&["n1", "n01"])), "n1,n01");
        assert_eq!(
            fold(&strings(&["n01", "n2", "n1", "n02"])),
            "n[01-02],n[1-2]"
        );
        assert_eq!(
            fold(&strings(&["n099", "n100", "n1000"])),
            "n[099-100,1000]"
        );
        assert_eq!(fold(&strings(&["n0", "n1"])), "n[0-1]");
    }

    #[test]
    fn fold_dedups_orders_and_shows_singletons_plain() {
        assert_eq!(fold(&strings(&["node5"])), "node5");
        assert_eq!(
            fold(&strings(&["db", "n3", "n1", "db", "n2", "x"])),
            "db,n[1-3],x"
        );
        assert_eq!(fold(&strings(&["b2", "a1", "b1", "a1"])), "b[1-2],a1");
        assert_eq!(fold(&strings(&["n5", "n5"])), "n5");
        assert_eq!(fold(&[]), "");
        // A number too long for u64 is left as it is.
        let big = "n123456789012345678901234567890";
        assert_eq!(fold(&strings(&[big, "n1"])), format!("{big},n1"));
    }

    #[test]
    fn fold_is_fast_for_large_fleets() {
        let names: Vec<String> = (1..=100_000).rev().map(|i| format!("n{i:06}")).collect();
        assert_eq!(fold(&names), "n[000001-100000]");
        let mut scattered: Vec<String> = (0..10_000).map(|i| format!("h{}", i * 2)).collect();
        scattered.push("x".to_owned());
        let folded = fold(&scattered);
        assert!(folded.starts_with("h[0,2,4,"), "{folded}");
        assert!(folded.ends_with(",19996,19998],x"), "{folded}");
        assert_eq!(expand(&folded).unwrap().len(), 10_001);
    }

    #[test]
    fn fold_round_trips() {
        let cases: Vec<Vec<String>> = vec![
            strings(&["node001", "node002", "node003", "node007"]),
            strings(&["n9", "n10", "n09", "n1", "n01", "n001", "n0", "n00"]),
            strings(&["a", "b1", "b1", "c2d", "c3d", "c3e", "10.0.0.1", "10.0.0.2"]),
            strings(&["x099", "x100", "x0100", "x1000", "x10", "x010"]),
            expanded("rack[1-3]-node[001-040],login[1-2],10.1.[0-3].[1-254]"),
        ];
        for names in cases {
            let folded = fold(&names);
            let mut again = expand(&folded).unwrap_or_else(|e| panic!("{folded}: {e}"));
            again.sort();
            let mut want = names.clone();
            want.sort();
            want.dedup();
            assert_eq!(again, want, "folded as {folded}");
        }
    }
}
