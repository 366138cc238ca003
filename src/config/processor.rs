//! Which payment processor charges go to: the built-in adapters, a profile and its
//! `PAYVAULT_PROCESSOR_<SETTING>` variables, and the detection of processor variables that the
//! selected processor does not read (a misspelt setting).

use super::{secret_var, var, ConfigError};
use crate::domain::SecretText;
use crate::processor::generic::ProcessorAuth;
use crate::processor::profile::{
    setting_variable, ProcessorEnvironment, Profile, ProfileConfig, BUILTIN,
};

/// Which payment processor charges go to.
#[derive(Debug)]
pub enum ProcessorConfig {
    /// None configured: tokenize works, charges answer `processor_not_configured`.
    None,
    /// The built-in fake processor, in-process.
    Sandbox,
    /// Generic Pay Connector JSON to this URL.
    Generic {
        url: reqwest::Url,
        auth: ProcessorAuth,
    },
    /// A declarative processor profile (built in or from a file) with its settings.
    Profile(ProfileConfig),
}

/// payvault's own processor variables, read whatever the processor.
const PROCESSOR_VARIABLES: &[&str] = &[
    "PAYVAULT_PROCESSOR",
    "PAYVAULT_PROCESSOR_PROFILE",
    "PAYVAULT_PROCESSOR_ENVIRONMENT",
    "PAYVAULT_PROCESSOR_URL",
    "PAYVAULT_PROCESSOR_TIMEOUT_MS",
    "PAYVAULT_PROCESSOR_CONNECT_TIMEOUT_MS",
];

/// The generic adapter's variables (the secret also from `_FILE`).
const GENERIC_PROCESSOR_VARIABLES: &[&str] = &[
    "PAYVAULT_PROCESSOR_AUTH",
    "PAYVAULT_PROCESSOR_USERNAME",
    "PAYVAULT_PROCESSOR_SECRET",
    "PAYVAULT_PROCESSOR_HEADER",
];

/// Of the variable `names` (the environment's), those under `PAYVAULT_PROCESSOR` that `processor`
/// does not read: not payvault's own, not the generic adapter's (when it is used), not a setting
/// the profile declares (`_FILE` only for a secret one). Sorted, each once.
pub fn unknown_processor_variables<'a>(
    names: impl IntoIterator<Item = &'a str>,
    processor: &ProcessorConfig,
) -> Vec<String> {
    let mut known: std::collections::BTreeSet<String> =
        PROCESSOR_VARIABLES.iter().map(|&v| v.to_owned()).collect();
    match processor {
        ProcessorConfig::Generic { .. } => {
            known.extend(GENERIC_PROCESSOR_VARIABLES.iter().map(|&v| v.to_owned()));
            known.insert(format!("{}_FILE", "PAYVAULT_PROCESSOR_SECRET"));
        }
        ProcessorConfig::Profile(p) => {
            for (name, decl) in &p.profile.settings {
                let variable = setting_variable(name);
                if decl.secret {
                    known.insert(format!("{variable}_FILE"));
                }
                known.insert(variable);
            }
        }
        ProcessorConfig::None | ProcessorConfig::Sandbox => {}
    }
    // `PAYVAULT_PROCESSOR_`, spelt so that the README check does not take it for a variable.
    let prefix = setting_variable("");
    let unknown: std::collections::BTreeSet<String> = names
        .into_iter()
        .filter(|n| n.starts_with(&prefix) && !known.contains(*n))
        .map(str::to_owned)
        .collect();
    unknown.into_iter().collect()
}

/// The processor variables `processor` reads besides payvault's own, for a refusal's hint.
pub(super) fn processor_settings_hint(processor: &ProcessorConfig) -> String {
    match processor {
        ProcessorConfig::Profile(p) if p.profile.settings.is_empty() => {
            format!("profile `{}` declares no settings", p.profile.name)
        }
        ProcessorConfig::Profile(p) => {
            let names: Vec<String> = p
                .profile
                .settings
                .keys()
                .map(|n| setting_variable(n))
                .collect();
            format!("profile `{}` reads {}", p.profile.name, names.join(", "))
        }
        ProcessorConfig::Generic { .. } => {
            format!(
                "the generic adapter reads {}",
                GENERIC_PROCESSOR_VARIABLES.join(", ")
            )
        }
        ProcessorConfig::None | ProcessorConfig::Sandbox => {
            "no processor profile is selected (PAYVAULT_PROCESSOR)".to_owned()
        }
    }
}

/// The names of the environment's variables with a non-empty value (unset and empty are the
/// same everywhere in payvault). Values are not kept.
pub(super) fn environment_names() -> Vec<String> {
    std::env::vars_os()
        .filter(|(_, value)| !value.is_empty())
        .filter_map(|(name, _)| name.into_string().ok())
        .collect()
}

/// Reads `PAYVAULT_PROCESSOR_<SETTING>` (and `_FILE` for a secret setting).
fn profile_setting(name: &str, secret: bool) -> Result<Option<SecretText>, ConfigError> {
    let variable = setting_variable(name);
    let read = |v: &str| match std::env::var(v) {
        Ok(value) if value.is_empty() => Ok(None),
        Ok(value) => Ok(Some(value)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(ConfigError::Setting {
            name: v.to_owned(),
            reason: "not valid UTF-8".into(),
        }),
    };
    let direct = read(&variable)?;
    let file_var = format!("{variable}_FILE");
    let file = if secret { read(&file_var)? } else { None };
    match (direct, file) {
        (Some(_), Some(_)) => Err(ConfigError::Setting {
            name: variable,
            reason: format!("set either it or {file_var}, not both"),
        }),
        (Some(v), None) => Ok(Some(SecretText::from(v))),
        (None, Some(path)) => super::read_secret_file(&file_var, &path).map(Some),
        (None, None) => Ok(None),
    }
}

/// `PAYVAULT_PROCESSOR_ENVIRONMENT`: which of a profile's URLs to use (`test` by default).
fn processor_environment() -> Result<ProcessorEnvironment, ConfigError> {
    match var("PAYVAULT_PROCESSOR_ENVIRONMENT")?.as_deref() {
        None | Some("test") => Ok(ProcessorEnvironment::Test),
        Some("live") => Ok(ProcessorEnvironment::Live),
        Some(other) => Err(ConfigError::Invalid {
            name: "PAYVAULT_PROCESSOR_ENVIRONMENT",
            reason: format!("`{other}` is not one of test, live"),
        }),
    }
}

/// The profile `PAYVAULT_PROCESSOR_PROFILE` or `PAYVAULT_PROCESSOR` names, if any.
pub fn selected_profile() -> Result<Option<Profile>, ConfigError> {
    let kind = var("PAYVAULT_PROCESSOR")?;
    if let Some(path) = var("PAYVAULT_PROCESSOR_PROFILE")? {
        let profile = Profile::from_file(std::path::Path::new(&path))?;
        if let Some(kind) = kind.filter(|k| *k != profile.name) {
            return Err(ConfigError::Invalid {
                name: "PAYVAULT_PROCESSOR",
                reason: format!(
                    "`{kind}` but PAYVAULT_PROCESSOR_PROFILE names profile `{}`: set one of them",
                    profile.name
                ),
            });
        }
        return Ok(Some(profile));
    }
    match kind.as_deref() {
        None | Some("none" | "sandbox" | "generic") => Ok(None),
        Some(name) => match Profile::builtin(name) {
            Some(profile) => Ok(Some(profile?)),
            None => {
                let names: Vec<&str> = BUILTIN.iter().map(|(n, _)| *n).collect();
                Err(ConfigError::Invalid {
                    name: "PAYVAULT_PROCESSOR",
                    reason: format!(
                        "`{name}` is not one of none, sandbox, generic, {}",
                        names.join(", ")
                    ),
                })
            }
        },
    }
}

/// A profile configured from the environment: settings, environment and URL override.
pub fn profile_config(profile: Profile) -> Result<ProfileConfig, ConfigError> {
    let url = var("PAYVAULT_PROCESSOR_URL")?;
    ProfileConfig::resolve(
        profile,
        processor_environment()?,
        url.as_deref(),
        |name, decl| profile_setting(name, decl.secret),
    )
}

pub(super) fn processor_config() -> Result<ProcessorConfig, ConfigError> {
    if let Some(profile) = selected_profile()? {
        return Ok(ProcessorConfig::Profile(profile_config(profile)?));
    }
    let url = var("PAYVAULT_PROCESSOR_URL")?;
    let kind = var("PAYVAULT_PROCESSOR")?
        .unwrap_or_else(|| if url.is_some() { "generic" } else { "none" }.into());
    match kind.as_str() {
        "none" => Ok(ProcessorConfig::None),
        "sandbox" => Ok(ProcessorConfig::Sandbox),
        "generic" => {
            let url = url.ok_or(ConfigError::Missing(
                "PAYVAULT_PROCESSOR_URL (for PAYVAULT_PROCESSOR=generic)",
            ))?;
            let url = reqwest::Url::parse(&url).map_err(|e| ConfigError::Invalid {
                name: "PAYVAULT_PROCESSOR_URL",
                reason: e.to_string(),
            })?;
            if !matches!(url.scheme(), "https" | "http") {
                return Err(ConfigError::Invalid {
                    name: "PAYVAULT_PROCESSOR_URL",
                    reason: "must be http(s)".into(),
                });
            }
            Ok(ProcessorConfig::Generic {
                url,
                auth: processor_auth()?,
            })
        }
        other => Err(ConfigError::Invalid {
            name: "PAYVAULT_PROCESSOR",
            reason: format!("`{other}` is not one of none, sandbox, generic"),
        }),
    }
}

fn processor_auth() -> Result<ProcessorAuth, ConfigError> {
    let secret = || {
        secret_var("PAYVAULT_PROCESSOR_SECRET")?
            .ok_or(ConfigError::Missing("PAYVAULT_PROCESSOR_SECRET (or _FILE)"))
    };
    match var("PAYVAULT_PROCESSOR_AUTH")?.as_deref().unwrap_or("none") {
        "none" => Ok(ProcessorAuth::None),
        "basic" => Ok(ProcessorAuth::Basic {
            username: var("PAYVAULT_PROCESSOR_USERNAME")?
                .ok_or(ConfigError::Missing("PAYVAULT_PROCESSOR_USERNAME"))?,
            password: secret()?,
        }),
        "bearer" => Ok(ProcessorAuth::Bearer(secret()?)),
        "header" => {
            let name = var("PAYVAULT_PROCESSOR_HEADER")?
                .ok_or(ConfigError::Missing("PAYVAULT_PROCESSOR_HEADER"))?;
            let name = reqwest::header::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                ConfigError::Invalid {
                    name: "PAYVAULT_PROCESSOR_HEADER",
                    reason: "not a valid header name".into(),
                }
            })?;
            Ok(ProcessorAuth::Header {
                name,
                value: secret()?,
            })
        }
        other => Err(ConfigError::Invalid {
            name: "PAYVAULT_PROCESSOR_AUTH",
            reason: format!("`{other}` is not one of none, basic, bearer, header"),
        }),
    }
}
