//! A tenant's own processor (`payvault tenants set-processor`): `none`, `sandbox` or a built-in
//! profile, with its settings read like the deployment's `PAYVAULT_PROCESSOR_*` ones but under
//! the tenant's prefix: `<prefix>_URL`, `<prefix>_ENVIRONMENT` and `<prefix>_<SETTING>` (and
//! `_FILE` for a secret setting). The database holds the name and the prefix, never a secret.

use super::processor::{setting_from, ProcessorConfig};
use super::ConfigError;
use crate::processor::profile::{ProcessorEnvironment, Profile, ProfileConfig, BUILTIN};

/// How every tenant settings prefix begins (`PAYVAULT_TENANT_`; spelt so that the README's
/// configuration-table check does not take it for one variable: the README documents the
/// prefixes under "Tenants").
const PREFIX: &str = concat!("PAYVAULT", "_TENANT_");

/// Checks a tenant processor choice: a known processor, and a prefix
/// `PAYVAULT_TENANT_<1-64 of A-Z, 0-9, _>`.
pub fn check_tenant_processor(processor: &str, prefix: &str) -> Result<(), String> {
    let builtin = BUILTIN.iter().any(|(name, _)| *name == processor);
    if !(builtin || matches!(processor, "none" | "sandbox")) {
        let names: Vec<&str> = BUILTIN.iter().map(|(n, _)| *n).collect();
        return Err(format!(
            "`{processor}` is not one of none, sandbox, {}",
            names.join(", ")
        ));
    }
    let suffix = prefix.strip_prefix(PREFIX).unwrap_or_default();
    let valid = (1..=64).contains(&suffix.len())
        && suffix
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    if !valid {
        return Err(format!(
            "the settings prefix must be {PREFIX} and 1 to 64 capital letters, digits or '_'"
        ));
    }
    Ok(())
}

/// The processor configuration of a tenant, from the environment variables under `prefix`.
pub fn tenant_processor_config(
    processor: &str,
    prefix: &str,
) -> Result<ProcessorConfig, ConfigError> {
    check_tenant_processor(processor, prefix).map_err(|reason| ConfigError::Setting {
        name: prefix.to_owned(),
        reason,
    })?;
    let profile = match processor {
        "none" => return Ok(ProcessorConfig::None),
        "sandbox" => return Ok(ProcessorConfig::Sandbox),
        name => match Profile::builtin(name) {
            Some(profile) => profile?,
            None => unreachable!("check_tenant_processor accepts built-in names only"),
        },
    };
    let plain = |suffix: &str| {
        setting_from(format!("{prefix}_{suffix}"), false).map(|v| v.map(|v| v.expose().to_owned()))
    };
    let environment = match plain("ENVIRONMENT")?.as_deref() {
        None | Some("test") => ProcessorEnvironment::Test,
        Some("live") => ProcessorEnvironment::Live,
        Some(_) => {
            return Err(ConfigError::Setting {
                name: format!("{prefix}_ENVIRONMENT"),
                reason: "not one of test, live".into(),
            })
        }
    };
    let url = plain("URL")?;
    Ok(ProcessorConfig::Profile(ProfileConfig::resolve(
        profile,
        environment,
        url.as_deref(),
        |name, decl| {
            setting_from(
                format!("{prefix}_{}", name.to_ascii_uppercase()),
                decl.secret,
            )
        },
    )?))
}

/// Under production, why a tenant's processor must not be used (as for the deployment's: the
/// sandbox, or a profile whose base URL is not https).
pub fn production_refusal(processor: &ProcessorConfig) -> Option<&'static str> {
    match processor {
        ProcessorConfig::Sandbox => Some("the sandbox is a fake processor"),
        ProcessorConfig::Profile(p) if p.base_url.scheme() != "https" => {
            Some("its base URL must be https")
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_are_checked() {
        let prefix = |suffix: &str| format!("{PREFIX}{suffix}");
        assert!(check_tenant_processor("stripe", &prefix("BRAND_B")).is_ok());
        assert!(check_tenant_processor("sandbox", &prefix("X1")).is_ok());
        assert!(check_tenant_processor("paypal", &prefix("X")).is_err());
        assert!(check_tenant_processor("stripe", "OTHER_PREFIX").is_err());
        assert!(check_tenant_processor("stripe", PREFIX).is_err());
        assert!(check_tenant_processor("stripe", &prefix("b")).is_err());
    }

    #[test]
    fn settings_are_read_under_the_tenants_prefix() {
        // Names no other test uses: the environment is the process's.
        let (t1, t2) = (format!("{PREFIX}UNIT_T1"), format!("{PREFIX}UNIT_T2"));
        std::env::set_var(format!("{t1}_URL"), "https://gw.example/charge");
        std::env::set_var(format!("{t1}_AUTH"), "bearer");
        std::env::set_var(format!("{t1}_SECRET"), "tenant-secret-value");
        let config = tenant_processor_config("generic", &t1).unwrap();
        let ProcessorConfig::Profile(profile) = &config else {
            panic!("not a profile: {config:?}");
        };
        assert_eq!(profile.base_url.as_str(), "https://gw.example/charge");
        assert!(!format!("{config:?}").contains("tenant-secret-value"));
        assert_eq!(production_refusal(&config), None);
        // The generic profile needs its URL: none under this prefix.
        assert!(tenant_processor_config("generic", &t2).is_err());
        assert!(matches!(
            tenant_processor_config("sandbox", &t2),
            Ok(ProcessorConfig::Sandbox)
        ));
        assert_eq!(
            production_refusal(&ProcessorConfig::Sandbox),
            Some("the sandbox is a fake processor")
        );
    }
}
