//! The command lines pushrun sends to a host: quoting, the line that starts
//! one of the scripts, and the sudo wrapper around it.
//!
//! Every remote command line is built here, so there is one place to read
//! to know what a host's sshd is asked to run.

/// Quotes `s` for a POSIX shell: one single-quoted word.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The remote command line with the script in it: exports, then `exec sh
/// -c SCRIPT NAME ARGS...`. Only for a PTY, whose stdin is a terminal that
/// would echo a script sent on it; everything else starts through
/// `remote::start`, whose line is fixed.
///
/// `exec` makes the script the session's process group leader (see exec.sh).
pub fn remote_line(script: &str, name: &str, args: &[&str], vars: &[(String, String)]) -> String {
    let mut s = String::new();
    for (k, v) in vars {
        s.push_str(&format!("export {k}={}; ", sh_quote(v)));
    }
    s.push_str(&format!("exec sh -c {} {name}", sh_quote(script)));
    for a in args {
        s.push(' ');
        s.push_str(&sh_quote(a));
    }
    s
}

/// The marker pushrun gives sudo as its prompt on a terminal, to answer it
/// and take it out of the output.
pub const SUDO_PROMPT: &str = "[pushrun-sudo-password]";

/// How sudo gets its password, when it asks for one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SudoVia {
    /// It does not ask: `sudo -n` (fails rather than asks).
    Nothing,
    /// On stdin, first line, no prompt: `sudo -S -p ''`.
    Stdin,
    /// Asked on the terminal with our own prompt ([`SUDO_PROMPT`]), which
    /// pushrun answers and takes out of the output.
    Prompt,
}

/// `inner` with the terminal's echo turned off first: a payload's run under
/// a PTY must not show the "stop" line pushrun writes to it.
pub fn without_echo(inner: &str) -> String {
    format!("stty -echo 2>/dev/null; {inner}")
}

/// The command line that runs `inner` (a remote shell line) through sudo.
pub fn sudo_line(inner: &str, user: &str, via: SudoVia) -> String {
    let q = sh_quote;
    let flags = match via {
        SudoVia::Nothing => "-n".to_string(),
        SudoVia::Stdin => "-S -p ''".to_string(),
        SudoVia::Prompt => format!("-p {}", q(SUDO_PROMPT)),
    };
    format!("exec sudo {flags} -u {} -- sh -c {}", q(user), q(inner))
}

/// The command line that starts a bootstrap (`remote::Start::boot`) through
/// sudo: a fixed line, as the bootstrap's own.
pub fn sudo_boot(boot: &str, user: &str, via: SudoVia) -> String {
    let flags = match via {
        SudoVia::Nothing => "-n".to_string(),
        SudoVia::Stdin => "-S -p ''".to_string(),
        SudoVia::Prompt => format!("-p {}", sh_quote(SUDO_PROMPT)),
    };
    format!("exec sudo {flags} -u {} -- {boot}", sh_quote(user))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sudo_lines_quote_the_inner_command() {
        let line = sudo_line("echo 'x'", "root", SudoVia::Nothing);
        assert_eq!(line, r"exec sudo -n -u 'root' -- sh -c 'echo '\''x'\'''");
        assert!(sudo_line("true", "root", SudoVia::Stdin).contains("-S -p ''"));
    }

    #[test]
    fn quoting_survives_single_quotes() {
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
        assert_eq!(sh_quote(""), "''");
    }
}
