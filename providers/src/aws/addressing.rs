//! How a `vaultbridge.path` and `vaultbridge.version` address a secret: a
//! name or an ARN, a VersionId or a staging label.

use crate::ProviderError;

/// What `vaultbridge.version` selects.
///
/// The rule: `id:<x>` is VersionId `x` and `stage:<x>` is staging label `x`,
/// explicitly; otherwise a value shaped like a UUID (8-4-4-4-12 hexadecimal
/// digits, any case — what Secrets Manager generates) is a VersionId, and
/// anything else is a staging label (`AWSCURRENT`, `AWSPREVIOUS`, custom).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionSelector<'a> {
    Id(&'a str),
    Stage(&'a str),
}

impl<'a> VersionSelector<'a> {
    pub fn parse(version: &'a str) -> Result<Self, ProviderError> {
        let selector = if let Some(id) = version.strip_prefix("id:") {
            VersionSelector::Id(id)
        } else if let Some(stage) = version.strip_prefix("stage:") {
            VersionSelector::Stage(stage)
        } else if looks_like_uuid(version) {
            VersionSelector::Id(version)
        } else {
            VersionSelector::Stage(version)
        };
        match selector {
            VersionSelector::Id(id) if !(32..=64).contains(&id.len()) => {
                Err(ProviderError::Invalid(format!(
                    "vaultbridge.version: a VersionId has 32 to 64 characters, '{id}' has {}",
                    id.len()
                )))
            }
            VersionSelector::Stage(stage) if stage.is_empty() || stage.len() > 256 => {
                Err(ProviderError::Invalid(format!(
                    "vaultbridge.version: a staging label has 1 to 256 characters, this one has {}",
                    stage.len()
                )))
            }
            selector => Ok(selector),
        }
    }

    pub(crate) fn describe(&self) -> String {
        match self {
            VersionSelector::Id(id) => format!("version id {id}"),
            VersionSelector::Stage(stage) => format!("version stage {stage}"),
        }
    }
}

fn looks_like_uuid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(group, len)| group.len() == len && group.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The parts of a Secrets Manager ARN we check before asking AWS.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct ArnParts<'a> {
    pub(super) service: &'a str,
    pub(super) region: &'a str,
}

/// `arn:<partition>:secretsmanager:<region>:<account>:secret:<name>[-XXXXXX]`.
pub(super) fn parse_arn(path: &str) -> Option<ArnParts<'_>> {
    let mut parts = path.splitn(7, ':');
    if parts.next()? != "arn" {
        return None;
    }
    let _partition = parts.next()?;
    let service = parts.next()?;
    let region = parts.next()?;
    Some(ArnParts { service, region })
}
