//! The ways to obtain a Vault token — a given token, AppRole (optionally
//! with a wrapped secret_id), JWT/OIDC, TLS certificate, userpass — and the
//! credential files they read. Each login is one call; the session
//! (`super`) decides when to log in and keeps the token alive.

use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Mutex;
use vaultrs::api::AuthInfo;

use super::super::http::{Failure, Http};
use super::{Session, quiet};
use crate::ProviderError;

/// How we obtain a token, resolved from the config (files checked).
pub(crate) enum Method {
    /// A token given to us: from a file (re-read at each "login") or fixed.
    Token {
        file: Option<PathBuf>,
        fixed: Option<SecretString>,
        /// Where the fixed token came from, for messages.
        source: String,
    },
    AppRole {
        mount: String,
        role_id_file: PathBuf,
        secret_id_file: PathBuf,
        wrapped: bool,
        /// The last wrapping token we unwrapped and what it held: a
        /// wrapping token works once, so re-logins reuse the secret_id
        /// until the file holds a new wrapping token.
        unwrapped: Mutex<Option<(SecretString, SecretString)>>,
    },
    Jwt {
        mount: String,
        role: String,
        jwt_file: PathBuf,
    },
    Cert {
        mount: String,
        name: Option<String>,
        /// A client with the login certificate, when it differs from the
        /// provider's own TLS identity.
        login_http: Option<Http>,
    },
    Userpass {
        mount: String,
        username: String,
        password_file: PathBuf,
    },
}

impl Method {
    /// "approle (auth/approle)", for logs and messages. Never a credential.
    pub fn describe(&self) -> String {
        match self {
            Method::Token { file: Some(f), .. } => format!("token from {}", f.display()),
            Method::Token { source, .. } => format!("token from {source}"),
            Method::AppRole {
                mount,
                role_id_file,
                ..
            } => {
                format!(
                    "approle login at auth/{mount} (role_id from {})",
                    role_id_file.display()
                )
            }
            Method::Jwt { mount, role, .. } => format!("jwt login at auth/{mount}, role '{role}'"),
            Method::Cert { mount, name, .. } => match name {
                Some(name) => format!("cert login at auth/{mount}, role '{name}'"),
                None => format!("cert login at auth/{mount}"),
            },
            Method::Userpass {
                mount, username, ..
            } => {
                format!("userpass login at auth/{mount}, user '{username}'")
            }
        }
    }

    /// Log in with every method but a given token (which the session looks
    /// up instead): one call to Vault, its answer's `auth`.
    pub(super) async fn log_in(&self, session: &Session) -> Result<AuthInfo, ProviderError> {
        let what = self.describe();
        let login_error = |f: Failure| login_failure(&session.http.shown, &what, f);
        let none = SecretString::from("");
        Ok(match self {
            // A given token is looked up by the session, never logged in with.
            Method::Token { .. } => {
                return Err(ProviderError::Unauthenticated(format!(
                    "{what}: a given token cannot log in"
                )));
            }
            Method::AppRole {
                mount,
                role_id_file,
                secret_id_file,
                wrapped,
                unwrapped,
            } => {
                let role_id = read_token(role_id_file, "role_id").await?;
                let secret_id = if *wrapped {
                    Self::unwrap_secret_id(session, secret_id_file, unwrapped).await?
                } else {
                    read_token(secret_id_file, "secret_id").await?
                };
                let client = session.http.vault(&none);
                quiet(vaultrs::auth::approle::login(
                    &client,
                    mount,
                    role_id.expose_secret(),
                    secret_id.expose_secret(),
                ))
                .await
                .map_err(login_error)?
            }
            Method::Jwt {
                mount,
                role,
                jwt_file,
            } => {
                let jwt = read_token(jwt_file, "JWT").await?;
                let client = session.http.vault(&none);
                quiet(vaultrs::auth::oidc::login(
                    &client,
                    mount,
                    jwt.expose_secret(),
                    Some(role.clone()),
                ))
                .await
                .map_err(login_error)?
            }
            Method::Cert {
                mount,
                name,
                login_http,
            } => {
                let client = login_http.as_ref().unwrap_or(&session.http).vault(&none);
                quiet(vaultrs::auth::cert::login(
                    &client,
                    mount,
                    name.as_deref().unwrap_or(""),
                ))
                .await
                .map_err(login_error)?
            }
            Method::Userpass {
                mount,
                username,
                password_file,
            } => {
                let password = read_secret(password_file, "password").await?;
                let client = session.http.vault(&none);
                quiet(vaultrs::auth::userpass::login(
                    &client,
                    mount,
                    username,
                    password.expose_secret(),
                ))
                .await
                .map_err(login_error)?
            }
        })
    }

    /// The secret_id behind the wrapping token in `file`.
    async fn unwrap_secret_id(
        session: &Session,
        file: &Path,
        cache: &Mutex<Option<(SecretString, SecretString)>>,
    ) -> Result<SecretString, ProviderError> {
        let wrapping = read_token(file, "wrapping token").await?;
        let mut cache = cache.lock().await;
        if let Some((seen, secret_id)) = cache.as_ref()
            && seen.expose_secret() == wrapping.expose_secret()
        {
            return Ok(secret_id.clone());
        }
        let client = session.http.vault(&wrapping);
        let data: serde_json::Value = quiet(vaultrs::sys::wrapping::unwrap(&client, None))
            .await
            .map_err(|f| match f {
                Failure::Status { code: 400 | 403, .. } => ProviderError::Unauthenticated(format!(
                    "the wrapping token in {} (auth.secret_id_wrapped) is invalid, expired or already used; write a fresh one (vault write -wrap-ttl=… -f auth/<mount>/role/<role>/secret-id)",
                    file.display()
                )),
                other => login_failure(&session.http.shown, "unwrapping the secret_id", other),
            })?;
        let secret_id = data
            .get("secret_id")
            .and_then(|v| v.as_str())
            .map(SecretString::from)
            .ok_or_else(|| {
                ProviderError::Unauthenticated(format!(
                    "the wrapping token in {} does not wrap an AppRole secret_id",
                    file.display()
                ))
            })?;
        *cache = Some((wrapping, secret_id.clone()));
        Ok(secret_id)
    }
}

/// Read a credential file, trimmed. The message names the file, never
/// the content. On a blocking thread, one read per file at a time
/// ([`crate::credential_file::read_text_blocking`]): a hung file system
/// holds that thread and this login, never the runtime's worker.
pub(super) async fn read_secret(path: &Path, what: &str) -> Result<SecretString, ProviderError> {
    let text = crate::credential_file::read_text_blocking(path)
        .await
        .map_err(|err| {
            ProviderError::Unauthenticated(format!(
                "cannot read the {what} file {}: {err}",
                path.display()
            ))
        })?;
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(ProviderError::Unauthenticated(format!(
            "the {what} file {} is empty",
            path.display()
        )));
    }
    Ok(SecretString::from(trimmed.to_string()))
}

/// [`read_secret`] for tokens, ids and JWTs: printable ASCII only. A token
/// becomes a header, where a control character would make the HTTP client
/// panic on every request; checked at each re-read of the file.
pub(super) async fn read_token(path: &Path, what: &str) -> Result<SecretString, ProviderError> {
    let value = read_secret(path, what).await?;
    if super::super::config::header_token(value.expose_secret()).is_none() {
        return Err(ProviderError::Unauthenticated(format!(
            "the {what} file {} holds a space or control character inside the value; write the value alone",
            path.display()
        )));
    }
    Ok(value)
}

/// A failed login, as the operator should read it.
pub(super) fn login_failure(address: &str, what: &str, f: Failure) -> ProviderError {
    match f {
        Failure::Status {
            code: 400 | 401 | 403,
            ..
        } => ProviderError::Unauthenticated(format!(
            "{what} was refused by Vault at {address}: {}; check the role and credentials",
            f.errors()
        )),
        Failure::Status { code: 404, .. } => ProviderError::Unauthenticated(format!(
            "{what}: no such auth method or role at Vault {address} ({}); check auth.mount and the role",
            f.errors()
        )),
        other => super::super::unavailable(address, &format!("{what} failed"), other),
    }
}
