//! Passwords and sudo for each host, from the inventory and the flags.
//!
//! Passwords are read here, before any host is contacted, so a run that
//! goes on unattended never stops to ask; the environment variables the
//! inventory names are taken out of the environment as they are read, so
//! nothing pushrun starts sees them.

use std::collections::HashMap;
use std::sync::Arc;

use crate::auth::{self, Access, Become, Secret};
use crate::error::Error;
use crate::fleet::PtyMode;
use crate::inventory::{Host, PtySetting};

/// Reads a password for `flag`.
pub(super) fn ask(prompt: &str, flag: &'static str) -> Result<Arc<Secret>, Error> {
    auth::read_secret(prompt)
        .map(Arc::new)
        .map_err(|source| Error::Password { flag, source })
}

/// A password from the initiator's environment, named by the inventory.
fn password_from_env(
    host: &Host,
    key: &'static str,
    var: &str,
    seen: &mut HashMap<String, Arc<Secret>>,
) -> Result<Arc<Secret>, Error> {
    if let Some(secret) = seen.get(var) {
        return Ok(secret.clone());
    }
    match std::env::var(var) {
        Ok(value) => {
            // Not passed on to ssh or anything else pushrun starts.
            // SAFETY: plans are made before any other thread is started.
            unsafe { std::env::remove_var(var) };
            let secret = Arc::new(Secret::new(value));
            seen.insert(var.to_string(), secret.clone());
            Ok(secret)
        }
        Err(_) => Err(Error::PasswordEnv {
            host: host.name.clone(),
            key,
            var: var.to_string(),
        }),
    }
}

/// Passwords and sudo for each host, from the inventory and the flags.
pub(super) fn access_for(
    hosts: &[Host],
    login: Option<Arc<Secret>>,
    become_flag: Option<&Option<String>>,
    become_password: Option<Arc<Secret>>,
    pty_flag: Option<PtyMode>,
) -> Result<Vec<Access>, Error> {
    let mut access = Vec::with_capacity(hosts.len());
    let mut seen = HashMap::new();
    for host in hosts {
        let s = &host.settings;
        let password = match &s.password_env {
            Some(var) => Some(password_from_env(host, "password_env", var, &mut seen)?),
            None => login.clone(),
        };
        let user = match become_flag {
            Some(Some(user)) => Some(user.clone()),
            Some(None) => Some(s.become_user.clone().unwrap_or_else(|| "root".into())),
            None if s.become_ == Some(true) => {
                Some(s.become_user.clone().unwrap_or_else(|| "root".into()))
            }
            None => None,
        };
        let become_ = match user {
            Some(user) => Some(Become {
                user,
                password: match &s.become_password_env {
                    Some(var) => Some(password_from_env(
                        host,
                        "become_password_env",
                        var,
                        &mut seen,
                    )?),
                    None => become_password.clone(),
                },
            }),
            None => None,
        };
        let pty_auto = match pty_flag {
            Some(mode) => mode != PtyMode::No,
            None => matches!(s.pty, Some(PtySetting::Auto | PtySetting::Yes)),
        };
        access.push(Access {
            password,
            become_,
            pty_auto,
        });
    }
    Ok(access)
}

/// `--become`, `--become-user` and `--ask-become-pass` of `copy` and
/// `fetch`: the same as `exec`'s `--become [USER]`, in two flags because
/// their last arguments are paths.
#[derive(Debug, clap::Args)]
pub struct SudoArgs {
    /// Go through sudo (as root, or --become-user), for files only root may
    /// write or read. Per host: `become: true`.
    #[arg(long = "become")]
    pub become_: bool,
    /// Whom --become becomes (default: the inventory's `become_user`, else root).
    #[arg(long, value_name = "USER", requires = "become_")]
    pub become_user: Option<String>,
    /// Ask for sudo's password once; used where sudo wants one.
    #[arg(long, short = 'K')]
    pub ask_become_pass: bool,
}

impl SudoArgs {
    /// Every host's passwords and sudo, the sudo password asked first where
    /// `--ask-become-pass` says so.
    pub(super) fn access(
        &self,
        hosts: &[Host],
        login: Option<Arc<Secret>>,
    ) -> Result<Vec<Access>, Error> {
        let become_password = if self.ask_become_pass {
            Some(ask("sudo password: ", "--ask-become-pass")?)
        } else {
            None
        };
        let flag = self.become_.then(|| self.become_user.clone());
        access_for(hosts, login, flag.as_ref(), become_password, None)
    }
}
