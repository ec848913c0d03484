//! The command lines pushrun sends to a host: quoting, and the sudo wrapper
//! around the fixed line that starts one of the scripts (`boot`; on a PTY
//! too, the script is never in the line).
//!
//! Every remote command line is built here, so there is one place to read
//! to know what a host's sshd is asked to run.

/// Quotes `s` for a POSIX shell: one single-quoted word.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
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
    fn sudo_lines_quote_the_user_and_keep_the_boot_line() {
        let line = sudo_boot("/bin/sh -c 'x' pushrun-run", "it's", SudoVia::Nothing);
        assert_eq!(
            line,
            r"exec sudo -n -u 'it'\''s' -- /bin/sh -c 'x' pushrun-run"
        );
        assert!(sudo_boot("true", "root", SudoVia::Stdin).contains("-S -p ''"));
    }

    #[test]
    fn quoting_survives_single_quotes() {
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
        assert_eq!(sh_quote(""), "''");
    }
}
