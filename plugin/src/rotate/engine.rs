//! The Docker Engine API, as much of it as rotation needs: secrets of our
//! driver, the services that use them, and the three writes (create a
//! secret, update a service, remove a secret). Nothing here decides.

use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

use bollard::Docker;
use bollard::models::{Driver, Secret, SecretSpec, Service, ServiceUpdateStatusStateEnum as State};
use bollard::query_parameters::{ListSecretsOptions, ListServicesOptions, UpdateServiceOptions};

use super::plan::{DriverSecret, ServiceUse, UpdateState};
use vaultbridge_providers::text::shown;

/// The engine, and the plugin names (as compared by the engine) whose
/// secrets are ours.
pub struct Engine {
    docker: Docker,
    drivers: Vec<String>,
}

/// A secret of ours, with what creating its successor needs.
#[derive(Debug, Clone)]
pub struct Listed {
    pub secret: DriverSecret,
    pub driver: Driver,
}

/// A service, as listed: what the planner sees and the spec to update.
#[derive(Debug, Clone)]
pub struct ListedService {
    pub service: ServiceUse,
    /// When its last update started (to tell ours from an earlier one).
    pub update_started: Option<SystemTime>,
    raw: Service,
}

impl Engine {
    /// `DOCKER_HOST` or the local socket, at the highest API version both
    /// sides speak (engine 20.10 stops at 1.41).
    pub async fn connect(drivers: Vec<String>) -> Result<Self, String> {
        let docker = Docker::connect_with_defaults()
            .map_err(|err| format!("cannot reach the Docker engine: {err}"))?;
        let docker = docker.negotiate_version().await.map_err(|err| {
            format!("the Docker engine does not answer (is DOCKER_HOST or /var/run/docker.sock right, and is this a swarm manager?): {err}")
        })?;
        Ok(Self { docker, drivers })
    }

    /// Every secret whose driver is one of ours.
    pub async fn secrets(&self) -> Result<Vec<Listed>, String> {
        let secrets = self
            .docker
            .list_secrets(None::<ListSecretsOptions>)
            .await
            .map_err(|err| format!("listing secrets failed: {err}"))?;
        Ok(secrets
            .into_iter()
            .filter_map(|secret| self.ours(secret))
            .collect())
    }

    fn ours(&self, secret: Secret) -> Option<Listed> {
        let spec = secret.spec?;
        let driver = spec.driver?;
        let name = driver.name.as_str();
        if !self
            .drivers
            .iter()
            .any(|ours| *ours == crate::stack::plugin_ref(name))
        {
            return None;
        }
        Some(Listed {
            secret: DriverSecret {
                id: secret.id?,
                name: spec.name?,
                labels: spec.labels.unwrap_or_default().into_iter().collect(),
                created: secret.created_at.as_deref().and_then(parse_time),
            },
            driver,
        })
    }

    /// Every service, with the secret ids it references.
    pub async fn services(&self) -> Result<Vec<ListedService>, String> {
        let services = self
            .docker
            .list_services(None::<ListServicesOptions>)
            .await
            .map_err(|err| format!("listing services failed: {err}"))?;
        Ok(services
            .into_iter()
            .filter_map(|raw| {
                let spec = raw.spec.as_ref()?;
                let secrets = secret_refs(&raw)
                    .iter()
                    .filter_map(|r| r.secret_id.clone())
                    .collect();
                let status = raw.update_status.as_ref();
                let update = match status.and_then(|s| s.state) {
                    Some(State::UPDATING) => UpdateState::Updating,
                    Some(
                        State::PAUSED
                        | State::ROLLBACK_STARTED
                        | State::ROLLBACK_PAUSED
                        | State::ROLLBACK_COMPLETED,
                    ) => UpdateState::Failed,
                    Some(State::EMPTY | State::COMPLETED) | None => UpdateState::Settled,
                };
                let service = ServiceUse {
                    id: raw.id.clone()?,
                    name: spec.name.clone().unwrap_or_default(),
                    secrets,
                    update,
                    message: status.and_then(|s| s.message.clone()),
                };
                let update_started = status
                    .and_then(|s| s.started_at.as_deref())
                    .and_then(parse_time);
                Some(ListedService {
                    service,
                    update_started,
                    raw,
                })
            })
            .collect())
    }

    /// A new secret with `old`'s driver: no data of its own, ever.
    pub async fn create_secret(
        &self,
        name: &str,
        labels: BTreeMap<String, String>,
        driver: &Driver,
    ) -> Result<String, String> {
        let spec = SecretSpec {
            name: Some(name.to_string()),
            labels: Some(labels.into_iter().collect::<HashMap<_, _>>()),
            data: None,
            driver: Some(driver.clone()),
            templating: None,
        };
        self.docker
            .create_secret(spec)
            .await
            .map(|created| created.id)
            .map_err(|err| format!("creating secret '{}' failed: {err}", shown(name)))
    }

    /// Point every reference to a secret in `swaps` (old id -> new id and
    /// name) at the new one, keeping its target file, owner and mode, in
    /// one update: the service's own `UpdateConfig` governs the roll.
    pub async fn swap_secrets(
        &self,
        service: &ListedService,
        swaps: &HashMap<String, (String, String)>,
    ) -> Result<(), String> {
        let mut spec = service.raw.spec.clone().unwrap_or_default();
        if let Some(refs) = spec
            .task_template
            .as_mut()
            .and_then(|t| t.container_spec.as_mut())
            .and_then(|c| c.secrets.as_mut())
        {
            for reference in refs.iter_mut() {
                let swap = reference.secret_id.as_ref().and_then(|id| swaps.get(id));
                if let Some((new_id, new_name)) = swap {
                    reference.secret_id = Some(new_id.clone());
                    reference.secret_name = Some(new_name.clone());
                }
            }
        }
        let version = service
            .raw
            .version
            .as_ref()
            .and_then(|v| v.index)
            .and_then(|index| i32::try_from(index).ok())
            .ok_or("the engine gave no usable version index for the service")?;
        let options = UpdateServiceOptions {
            version,
            ..Default::default()
        };
        self.docker
            .update_service(&service.service.id, spec, options, None)
            .await
            .map(|_| ())
            .map_err(|err| {
                format!(
                    "updating service '{}' failed: {err}",
                    shown(&service.service.name)
                )
            })
    }

    pub async fn remove_secret(&self, secret: &DriverSecret) -> Result<(), String> {
        self.docker
            .delete_secret(&secret.id)
            .await
            .map_err(|err| format!("removing secret '{}' failed: {err}", shown(&secret.name)))
    }
}

fn secret_refs(service: &Service) -> &[bollard::models::TaskSpecContainerSpecSecrets] {
    service
        .spec
        .as_ref()
        .and_then(|s| s.task_template.as_ref())
        .and_then(|t| t.container_spec.as_ref())
        .and_then(|c| c.secrets.as_deref())
        .unwrap_or_default()
}

/// The engine's RFC 3339 times (`2026-12-03T08:00:00.123456789Z`).
fn parse_time(text: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_engines_times() {
        let t = parse_time("2026-12-03T08:00:00.123456789Z").unwrap();
        let secs = t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
        assert_eq!(secs, 1_796_284_800);
        assert_eq!(parse_time("yesterday"), None);
    }
}
