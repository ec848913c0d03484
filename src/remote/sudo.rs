//! What `become.sh` answers: how sudo lets the login user become another.

/// What sudo said when pushrun checked it on a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SudoCheck {
    /// sudo runs without a password (`sudo -n`).
    NoPassword,
    /// sudo took the password on stdin (`sudo -S`).
    Password,
    /// sudo insists on a terminal (`Defaults requiretty`).
    NeedsTty,
    /// Anything else: why, in one line.
    Refused(String),
}

/// Reads the output of `remote/become.sh`: its last `result` line on
/// stdout, sudo's own words on stderr.
pub fn parse_sudo_check(stdout: &[u8], stderr: &[u8], login: &str) -> SudoCheck {
    let out = String::from_utf8_lossy(stdout);
    let err = String::from_utf8_lossy(stderr);
    let result = out
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("result "))
        .unwrap_or("");
    match result {
        "nopasswd" => return SudoCheck::NoPassword,
        "password" => return SudoCheck::Password,
        "missing" => return SudoCheck::Refused("sudo is not installed on the host".into()),
        _ => {}
    }
    if err.contains("must have a tty") {
        return SudoCheck::NeedsTty;
    }
    let who = if login.is_empty() {
        "the login user"
    } else {
        login
    };
    let why = if err.contains("not in the sudoers file") {
        format!("{who} is not in the sudoers file")
    } else if err.contains("is not allowed to execute") || err.contains("may not run sudo") {
        format!("{who} may not run commands as that user with sudo")
    } else if err.contains("incorrect password")
        || err.contains("Sorry, try again")
        || err.contains("no password was provided")
    {
        "incorrect sudo password".to_string()
    } else if err.contains("a password is required") {
        "a password is required (give become_password_env in the inventory, or --ask-become-pass)"
            .to_string()
    } else {
        match err.lines().rev().find(|l| !l.trim().is_empty()) {
            Some(last) => last.trim().to_string(),
            None if result.is_empty() => "no answer from the sudo check".to_string(),
            None => "refused".to_string(),
        }
    };
    SudoCheck::Refused(format!("sudo: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sudo_refusals_are_named() {
        let check = |err: &str| parse_sudo_check(b"result failed\n", err.as_bytes(), "ops");
        assert_eq!(
            parse_sudo_check(b"result nopasswd\n", b"", "ops"),
            SudoCheck::NoPassword
        );
        assert_eq!(
            check("sudo: sorry, you must have a tty to run sudo\n"),
            SudoCheck::NeedsTty
        );
        assert_eq!(
            check("ops is not in the sudoers file.  This incident will be reported.\n"),
            SudoCheck::Refused("sudo: ops is not in the sudoers file".into())
        );
        let SudoCheck::Refused(why) = check("sudo: a password is required\n") else {
            panic!()
        };
        assert!(why.starts_with("sudo: a password is required"), "{why}");
        assert_eq!(
            check(
                "Sorry, try again.\nsudo: no password was provided\nsudo: 1 incorrect password attempt\n"
            ),
            SudoCheck::Refused("sudo: incorrect sudo password".into())
        );
        assert_eq!(
            parse_sudo_check(b"result missing\n", b"", "ops"),
            SudoCheck::Refused("sudo is not installed on the host".into())
        );
    }
}
