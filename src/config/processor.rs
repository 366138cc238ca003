//! Which payment processor charges go to: the built-in adapters, a profile and its
//! `PAYVAULT_PROCESSOR_<SETTING>` variables, and the detection of processor variables that the
//! selected processor does not read (a misspelt setting).

use super::{var, ConfigError};
use crate::domain::SecretText;
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
    /// A declarative processor profile (built in, `generic` included, or from a file) with its
    /// settings.
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

/// Of the variable `names` (the environment's), those under `PAYVAULT_PROCESSOR` that `processor`
/// does not read: not payvault's own, not a setting the profile declares (`_FILE` only for a secret one). Sorted, each once.
pub fn unknown_processor_variables<'a>(
    names: impl IntoIterator<Item = &'a str>,
    processor: &ProcessorConfig,
) -> Vec<String> {
    let mut known: std::collections::BTreeSet<String> =
        PROCESSOR_VARIABLES.iter().map(|&v| v.to_owned()).collect();
    match processor {
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
    setting_from(setting_variable(name), secret)
}

/// Reads the setting `variable` (and `<variable>_FILE` for a secret setting).
pub(super) fn setting_from(
    variable: String,
    secret: bool,
) -> Result<Option<SecretText>, ConfigError> {
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

/// The profile `PAYVAULT_PROCESSOR_PROFILE` or `PAYVAULT_PROCESSOR` names, if any; with neither
/// set, `generic` when `PAYVAULT_PROCESSOR_URL` is set.
pub fn selected_profile() -> Result<Option<Profile>, ConfigError> {
    let kind = match var("PAYVAULT_PROCESSOR")? {
        None if var("PAYVAULT_PROCESSOR_PROFILE")?.is_none()
            && var("PAYVAULT_PROCESSOR_URL")?.is_some() =>
        {
            Some("generic".to_owned())
        }
        kind => kind,
    };
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
        None | Some("none" | "sandbox") => Ok(None),
        Some(name) => match Profile::builtin(name) {
            Some(profile) => Ok(Some(profile?)),
            None => {
                let names: Vec<&str> = BUILTIN.iter().map(|(n, _)| *n).collect();
                Err(ConfigError::Invalid {
                    name: "PAYVAULT_PROCESSOR",
                    reason: format!("`{name}` is not one of none, sandbox, {}", names.join(", ")),
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
    match var("PAYVAULT_PROCESSOR")?.as_deref() {
        None | Some("none") => Ok(ProcessorConfig::None),
        Some("sandbox") => Ok(ProcessorConfig::Sandbox),
        // `selected_profile` names every other value or refuses it.
        Some(other) => Err(ConfigError::Invalid {
            name: "PAYVAULT_PROCESSOR",
            reason: format!("`{other}` is not a processor"),
        }),
    }
}
