//! Host strings and NodeSet expressions, as ops people type them.
//!
//! A host string is what ssh, pdsh and clush accept for one host:
//! `host`, `user@host`, `host:port`, `[v6]:port`, `user@[v6]:port`, also as
//! an `ssh://` URL. A NodeSet expression combines host patterns the way
//! ClusterShell does: `,` union, `!` difference, `&` intersection, `^`
//! symmetric difference, applied left to right without precedence
//! (`a,b!c&d` is `((a ∪ b) − c) ∩ d`), each operand a range pattern
//! (`node[1-9/2]`), a glob or an `@group`. Both are parsed here, once, so
//! that `-w`, `-x`, `--limit` and a plain host list mean the same thing.

/// How an operand combines with what comes before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// `,`: add.
    Union,
    /// `!`: take away.
    Difference,
    /// `&`: keep only what is in both.
    Intersection,
    /// `^`: keep what is in exactly one.
    Symmetric,
}

/// Splits an expression at its operators outside brackets. The first
/// operand gets [`Op::Union`] unless the expression starts with an
/// operator; empty operands (`a,,b`, a trailing comma) are dropped, and
/// operands are trimmed.
pub(crate) fn operands(expr: &str) -> Vec<(Op, &str)> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    let mut op = Op::Union;
    for (at, c) in expr.char_indices() {
        let next = match c {
            '[' => {
                depth += 1;
                None
            }
            ']' => {
                depth = depth.saturating_sub(1);
                None
            }
            ',' if depth == 0 => Some(Op::Union),
            '!' if depth == 0 => Some(Op::Difference),
            '&' if depth == 0 => Some(Op::Intersection),
            '^' if depth == 0 => Some(Op::Symmetric),
            _ => None,
        };
        if let Some(next) = next {
            push(&mut out, op, &expr[start..at]);
            op = next;
            start = at + c.len_utf8();
        }
    }
    push(&mut out, op, &expr[start..]);
    out
}

fn push<'a>(out: &mut Vec<(Op, &'a str)>, op: Op, operand: &'a str) {
    let operand = operand.trim();
    if !operand.is_empty() {
        out.push((op, operand));
    }
}

/// One host string taken apart; `pattern` may still hold ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HostString<'a> {
    /// The login user, before `@`.
    pub(crate) user: Option<&'a str>,
    /// The host, a pattern, or an IPv6 address without its brackets.
    pub(crate) pattern: &'a str,
    /// The port, after the last `:`.
    pub(crate) port: Option<u16>,
    /// Whether `pattern` is an IPv6 address (never a range).
    pub(crate) ipv6: bool,
}

/// Takes a host string apart: `[ssh://][user@]host[:port]`, the host
/// possibly `[v6]` (with a port) or a bare IPv6 address (without one).
pub(crate) fn host_string(text: &str) -> Result<HostString<'_>, String> {
    let rest = text.strip_prefix("ssh://").unwrap_or(text);
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (user, rest) = match rest.split_once('@') {
        Some((user, host)) => (Some(user), host),
        None => (None, rest),
    };
    let port = |p: &str| -> Result<u16, String> {
        match p.parse::<u16>() {
            Ok(port) if port > 0 && p.bytes().all(|b| b.is_ascii_digit()) => Ok(port),
            _ => Err(format!("bad port {p:?} in {text:?}")),
        }
    };
    // `[…]` holding a colon is an IPv6 literal, not a range.
    if let Some(inner) = rest.strip_prefix('[')
        && let Some((address, after)) = inner.split_once(']')
        && address.contains(':')
    {
        let port = match after {
            "" => None,
            _ => Some(port(after.strip_prefix(':').unwrap_or(after))?),
        };
        return Ok(HostString {
            user,
            pattern: address,
            port,
            ipv6: true,
        });
    }
    match rest.matches(':').count() {
        0 => Ok(HostString {
            user,
            pattern: rest,
            port: None,
            ipv6: false,
        }),
        1 => {
            let (host, p) = rest.split_once(':').unwrap_or((rest, ""));
            Ok(HostString {
                user,
                pattern: host,
                port: Some(port(p)?),
                ipv6: false,
            })
        }
        _ => Ok(HostString {
            user,
            pattern: rest,
            port: None,
            ipv6: true,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operands_split_outside_brackets() {
        use Op::*;
        assert_eq!(
            operands("node[1,3]!node3&n^m, x"),
            [
                (Union, "node[1,3]"),
                (Difference, "node3"),
                (Intersection, "n"),
                (Symmetric, "m"),
                (Union, "x")
            ]
        );
        assert_eq!(operands("!@web"), [(Difference, "@web")]);
        assert_eq!(operands(" , "), []);
    }

    #[test]
    fn host_strings() {
        let hs = |text| host_string(text).unwrap();
        let plain = hs("web1");
        assert_eq!(
            (plain.user, plain.pattern, plain.port),
            (None, "web1", None)
        );
        let full = hs("ops@10.0.0.5:2222");
        assert_eq!(
            (full.user, full.pattern, full.port),
            (Some("ops"), "10.0.0.5", Some(2222))
        );
        let v6 = hs("ops@[::1]:2222");
        assert_eq!(
            (v6.user, v6.pattern, v6.port, v6.ipv6),
            (Some("ops"), "::1", Some(2222), true)
        );
        let bare = hs("fe80::1");
        assert_eq!(
            (bare.pattern, bare.port, bare.ipv6),
            ("fe80::1", None, true)
        );
        let url = hs("ssh://ops@host:22");
        assert_eq!(
            (url.user, url.pattern, url.port),
            (Some("ops"), "host", Some(22))
        );
        let range = hs("node[1-3]:22");
        assert_eq!((range.pattern, range.ipv6), ("node[1-3]", false));
        assert_eq!(host_string("a:x").unwrap_err(), "bad port \"x\" in \"a:x\"");
        assert_eq!(
            host_string("a:70000").unwrap_err(),
            "bad port \"70000\" in \"a:70000\""
        );
    }
}
