//! Credentials: login passwords (given to ssh through an askpass helper,
//! never on a command line or in an environment) and sudo ("become").
//!
//! The password of a host is written to a 0600 file in the run's private
//! control directory just before its master connection starts, and removed
//! as soon as the connection is up or has failed. ssh is started with
//! `SSH_ASKPASS` pointing at pushrun itself and `PUSHRUN_ASKPASS` naming the
//! file; pushrun started that way ([`askpass_main`]) prints the password
//! once per ssh process, so a wrong password is tried once, not again.

use std::io::{self, BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The environment variable that puts pushrun in askpass mode.
pub const ASKPASS_ENV: &str = "PUSHRUN_ASKPASS";

/// A password. Never printed (`Debug` shows `Secret(..)`), wiped on drop.
pub struct Secret(String);

impl Secret {
    /// Wraps `text`.
    pub fn new(text: String) -> Secret {
        Secret(text)
    }

    /// The password itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        // SAFETY: zero bytes are valid UTF-8.
        unsafe { self.0.as_bytes_mut() }.fill(0);
    }
}

/// How a host's commands go through sudo.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Become {
    /// Whom to become (`sudo -u`).
    pub user: String,
    /// sudo's password, for hosts where sudo asks for one.
    #[serde(with = "crate::encoding::secret")]
    pub password: Option<Arc<Secret>>,
}

/// Per host: what it takes to log in and to become another user.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Access {
    /// The login password (only used when the server asks for one).
    #[serde(with = "crate::encoding::secret")]
    pub password: Option<Arc<Secret>>,
    /// Run the command or payload through sudo.
    pub become_: Option<Become>,
    /// Whether a PTY may be used where sudo requires one (`pty: auto`).
    pub pty_auto: bool,
}

/// Asks for a password: on the terminal without echo when there is one,
/// else the next line of stdin (so `pass show x | pushrun --ask-pass` works).
pub fn read_secret(prompt: &str) -> io::Result<Secret> {
    if io::stdin().is_terminal() {
        return rpassword::prompt_password(prompt).map(Secret::new);
    }
    let mut line = String::new();
    if io::stdin().lock().read_line(&mut line)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "no terminal, and stdin is empty",
        ));
    }
    let trimmed = line.trim_end_matches(['\n', '\r']).to_string();
    // SAFETY: zero bytes are valid UTF-8.
    unsafe { line.as_bytes_mut() }.fill(0);
    Ok(Secret::new(trimmed))
}

/// Writes `secret` for the askpass helper: a new 0600 file at `path`.
pub fn write_askpass_file(path: &Path, secret: &Secret) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(secret.expose().as_bytes())
}

/// Removes the password file and the helper's once-only markers.
pub fn remove_askpass_file(path: &Path) {
    let _ = std::fs::remove_file(path);
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let prefix = format!("{}.used-", name.to_string_lossy());
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// pushrun started by ssh as its askpass program: answers the prompt in
/// `args[1]` and returns the exit status, or None when not in that mode.
pub fn askpass_main() -> Option<i32> {
    let file = PathBuf::from(std::env::var_os(ASKPASS_ENV)?);
    let prompt = std::env::args().nth(1).unwrap_or_default();
    Some(askpass_answer(&file, &prompt, &mut io::stdout()))
}

fn askpass_answer(file: &Path, prompt: &str, out: &mut dyn Write) -> i32 {
    let lower = prompt.to_ascii_lowercase();
    // A host key confirmation: never accepted by a prompt (see --host-key-checking).
    if lower.contains("(yes/no") {
        let _ = writeln!(out, "no");
        return 0;
    }
    // Key passphrases, one-time codes and the like are not ours to answer.
    if !lower.contains("password") {
        return 1;
    }
    // Once per ssh process: a wrong password is not tried again.
    let ppid = unsafe { libc::getppid() };
    let marker = PathBuf::from(format!("{}.used-{ppid}", file.display()));
    if std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&marker)
        .is_err()
    {
        return 1;
    }
    match std::fs::read_to_string(file) {
        Ok(mut password) => {
            let _ = writeln!(out, "{password}");
            let _ = out.flush();
            // SAFETY: zero bytes are valid UTF-8.
            unsafe { password.as_bytes_mut() }.fill(0);
            0
        }
        Err(_) => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::new("hunter2".into());
        assert_eq!(format!("{s:?}"), "Secret(..)");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn askpass_answers_a_password_prompt_once_and_refuses_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("0.pass");
        write_askpass_file(&file, &Secret::new("s3cret".into())).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        let mut out = Vec::new();
        assert_eq!(
            askpass_answer(&file, "Enter passphrase for key 'k':", &mut out),
            1
        );
        assert!(out.is_empty());
        let yes_no = "Are you sure you want to continue connecting (yes/no/[fingerprint])?";
        assert_eq!(askpass_answer(&file, yes_no, &mut out), 0);
        assert_eq!(out, b"no\n");
        out.clear();
        assert_eq!(askpass_answer(&file, "root@h's password: ", &mut out), 0);
        assert_eq!(out, b"s3cret\n");
        out.clear();
        // the same ssh asking again (a wrong password): no second try
        assert_eq!(askpass_answer(&file, "(root@h) Password: ", &mut out), 1);
        assert!(out.is_empty());
        remove_askpass_file(&file);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
