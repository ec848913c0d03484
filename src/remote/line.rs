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

/// Builtins and reserved words of bash, dash, busybox ash, ksh and zsh: a
/// command that starts with one is left to the login shell (see
/// [`plain_words`]), since the shells differ in what they do with it.
const SHELL_WORDS: &[&str] = &[
    "!",
    ".",
    ":",
    "[",
    "[[",
    "]]",
    "alias",
    "autoload",
    "bg",
    "bind",
    "break",
    "builtin",
    "caller",
    "case",
    "cat",
    "cd",
    "chdir",
    "command",
    "compgen",
    "complete",
    "compopt",
    "continue",
    "coproc",
    "declare",
    "dirs",
    "disown",
    "do",
    "done",
    "echo",
    "elif",
    "else",
    "emulate",
    "enable",
    "esac",
    "eval",
    "exec",
    "exit",
    "export",
    "false",
    "fc",
    "fg",
    "fi",
    "float",
    "for",
    "function",
    "functions",
    "getopts",
    "hash",
    "help",
    "history",
    "if",
    "in",
    "integer",
    "jobs",
    "kill",
    "let",
    "local",
    "login",
    "logout",
    "mapfile",
    "newgrp",
    "noglob",
    "nocorrect",
    "popd",
    "print",
    "printf",
    "pushd",
    "pwd",
    "r",
    "read",
    "readarray",
    "readonly",
    "realpath",
    "repeat",
    "return",
    "select",
    "set",
    "setopt",
    "shift",
    "shopt",
    "sleep",
    "source",
    "suspend",
    "test",
    "then",
    "time",
    "times",
    "trap",
    "true",
    "type",
    "typeset",
    "ulimit",
    "umask",
    "unalias",
    "unset",
    "until",
    "wait",
    "whence",
    "where",
    "which",
    "while",
    "{",
    "}",
];

/// The words of `command` when it is a plain external command that every
/// sh-like shell runs alike: words of letters, digits and `_./:,+@%=-`
/// only (nothing any shell quotes, expands, globs, redirects or splits
/// otherwise), separated by spaces or tabs, the first neither an assignment,
/// a job (`%1`) nor a builtin or reserved word of any of them. exec.sh runs
/// such words without a second login shell (`None`: it runs `command`
/// through the login shell, as always).
pub fn plain_words(command: &str) -> Option<Vec<&str>> {
    let plain = |w: &str| {
        w.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_./:,+@%=-".contains(&b))
    };
    let words: Vec<&str> = command
        .split([' ', '\t'])
        .filter(|w| !w.is_empty())
        .collect();
    let first = words.first()?;
    if !words.iter().all(|w| plain(w))
        || first.contains('=')
        || first.starts_with('%')
        || SHELL_WORDS.contains(first)
    {
        return None;
    }
    Some(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_external_commands_are_split_into_words() {
        assert_eq!(plain_words("hostname"), Some(vec!["hostname"]));
        assert_eq!(
            plain_words(" uname\t-r  /usr/bin/x a=b "),
            Some(vec!["uname", "-r", "/usr/bin/x", "a=b"])
        );
        for not in [
            "", " ", "echo hi", "time ls", "A=1 env", "%1", "ls *", "ls ~", "a;b", "a|b", "a&",
            "ls $HOME", "ls 'x'", "ls \"x\"", "ls a\\b", "a\nb", "ls {a,b}", "ls >x", "ls #x",
            "ls !x", "[ -f x ]", "ls (x)", "cmd `x`", "ls x?", "ls ^x", "ls é",
        ] {
            assert_eq!(plain_words(not), None, "{not:?}");
        }
    }

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
