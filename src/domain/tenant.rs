//! Tenants: the owner of every credential, vault entry, charge and audit event.

use uuid::Uuid;

/// The default tenant's fixed id, `00000000-0000-0000-0000-000000000001`, created by migration
/// `20261218000001_tenants.sql`. Everything that existed before tenants belongs to it, and a
/// deployment that never creates another tenant uses only it.
pub const DEFAULT_TENANT: Uuid = Uuid::from_u128(1);

/// The default tenant's name.
pub const DEFAULT_TENANT_NAME: &str = "default";

/// Checks a tenant name: 1 to 64 letters, digits, `.`, `_` or `-` (as the table's constraint).
pub fn check_tenant_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 64 {
        return Err("a tenant name must be 1 to 64 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err("a tenant name uses letters, digits, '-', '_' and '.'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_tenant_has_the_documented_id() {
        assert_eq!(
            DEFAULT_TENANT.to_string(),
            "00000000-0000-0000-0000-000000000001"
        );
    }

    #[test]
    fn names_are_checked() {
        assert!(check_tenant_name("brand-a.eu_1").is_ok());
        assert!(check_tenant_name("").is_err());
        assert!(check_tenant_name("a b").is_err());
        assert!(check_tenant_name(&"a".repeat(65)).is_err());
    }
}
