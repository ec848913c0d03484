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
