//! Vault's failures as `ProviderError`s that say what to do next.

use super::VaultProvider;
use super::http::Failure;
use crate::ProviderError;

pub(super) enum CallError {
    /// Already phrased (login failed).
    Provider(ProviderError),
    Vault(Failure),
}

/// 404 "no handler for route": nothing is mounted there.
pub(super) fn no_route(f: &Failure) -> bool {
    matches!(f, Failure::Status { errors, .. } if errors.iter().any(|e| e.contains("no handler for route")))
}

/// Everything that is not "not found" or "denied": sealed, down, TLS.
pub(crate) fn unavailable(address: &str, doing: &str, f: Failure) -> ProviderError {
    match f {
        Failure::Status {
            code: 503,
            ref errors,
        } if errors.iter().any(|e| e.contains("sealed")) => {
            ProviderError::unavailable(format!("{doing}: Vault at {address} is sealed; unseal it"))
        }
        Failure::Status { code, .. } => ProviderError::unavailable(format!(
            "{doing}: Vault at {address} answered HTTP {code} ({})",
            f.errors()
        )),
        Failure::Transport {
            message, tls: true, ..
        } => ProviderError::unavailable(format!(
            "{doing}: TLS with Vault at {address} failed: {message}; check ca_file, tls_server_name and the client certificate"
        )),
        Failure::Transport { message, .. } => ProviderError::unavailable(format!(
            "{doing}: cannot reach Vault at {address}: {message}"
        )),
        Failure::Other(message) => {
            ProviderError::unavailable(format!("{doing}: Vault at {address}: {message}"))
        }
        Failure::RateLimited {
            retry_after,
            errors,
        } => {
            let error = ProviderError::unavailable(format!(
                "{doing}: Vault at {address} is rate limiting requests (HTTP 429: {errors})"
            ));
            match retry_after {
                Some(wait) => error.with_retry_after(wait),
                None => error,
            }
        }
    }
}

impl VaultProvider {
    /// A 403 with a token Vault accepts: name the capability it lacks.
    /// `capability` is what the call needs: 'read' for a GET, 'update'
    /// for a logical POST.
    pub(super) async fn denied(
        &self,
        what: &str,
        capability: &str,
        api_path: &str,
        f: &Failure,
    ) -> ProviderError {
        let namespace = self
            .session
            .http
            .namespace
            .as_deref()
            .map(|n| format!(" in namespace '{n}'"))
            .unwrap_or_default();
        let policies = match self.session.policies().await {
            Some(policies) => format!("its policies [{}] must allow it", policies.join(", ")),
            None => "its policy must allow it (which policies it has is unknown: it may not look itself up)".into(),
        };
        ProviderError::Denied(format!(
            "permission denied for {what}: the token ({}) lacks '{capability}' on Vault API path '{api_path}'{namespace}; {policies}, or use another role ({})",
            self.session.method.describe(),
            f.errors()
        ))
    }
}
