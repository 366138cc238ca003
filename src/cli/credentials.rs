//! `payvault credentials`: the credentials callers use. A secret is printed once, at creation.

use clap::{Args, Subcommand, ValueEnum};

use super::db::{cli_audit_log, cli_pool, seal_before_exit};
use crate::auth::{admin, tenants, CredentialKind, Scope};
use crate::domain::DEFAULT_TENANT_NAME;

#[derive(Debug, Subcommand)]
pub enum CredentialsCommand {
    /// Create a credential; prints its username and secret once.
    Create {
        /// A label for the credential, e.g. `twilio-prod`.
        #[arg(long)]
        name: String,
        /// `connector` (Twilio, HTTP Basic) or `api` (merchant backend).
        #[arg(long, value_parser = parse_kind)]
        kind: CredentialKind,
        /// Comma-separated scopes (default for connector: `connector`).
        #[arg(long, value_delimiter = ',', value_parser = parse_scope)]
        scopes: Option<Vec<Scope>>,
        /// The tenant the credential belongs to, for good (default: the default tenant).
        #[arg(long, value_name = "NAME")]
        tenant: Option<String>,
        #[command(flatten)]
        format: FormatArg,
    },
    /// List credentials (never their secrets).
    List {
        /// Include revoked credentials.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        format: FormatArg,
    },
    /// Revoke a credential by username or name; takes effect on running instances at once.
    Revoke { username_or_name: String },
}

#[derive(Debug, Args)]
pub struct FormatArg {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

fn parse_kind(s: &str) -> Result<CredentialKind, String> {
    s.parse()
}

fn parse_scope(s: &str) -> Result<Scope, String> {
    s.trim()
        .parse()
        .map_err(|e: crate::auth::ScopeParseError| e.to_string())
}

pub async fn run(cmd: CredentialsCommand) -> anyhow::Result<()> {
    let pool = cli_pool().await?;
    let log = cli_audit_log(&pool).await?;
    let signer = log.signer();
    match cmd {
        CredentialsCommand::Create {
            name,
            kind,
            scopes,
            tenant,
            format,
        } => {
            let tenant = match tenant {
                Some(name) => tenants::find_active_tenant(&pool, &name).await?,
                None => tenants::find_active_tenant(&pool, DEFAULT_TENANT_NAME).await?,
            };
            let created =
                admin::create_credential_in(&pool, signer, tenant.id, &name, kind, scopes).await?;
            let row = &created.row;
            match format.format {
                Format::Json => {
                    let out = serde_json::json!({
                        "id": row.id,
                        "name": row.name,
                        "kind": row.kind,
                        "username": row.username,
                        "tenant": tenant.name,
                        // The one place a secret is ever printed: at creation, on request.
                        "secret": created.secret.expose(),
                        "scopes": row.scopes,
                        "created_at": row.created_at,
                    });
                    println!("{out}");
                }
                Format::Text => {
                    println!(
                        "Created {} credential `{}` ({})",
                        row.kind, row.name, row.id
                    );
                    println!("  tenant:   {}", tenant.name);
                    println!("  username: {}", row.username);
                    println!("  secret:   {}", created.secret.expose());
                    if row.kind == "api" {
                        // The bearer form of the same credential, for `Authorization: Bearer ...`.
                        println!("  api key:  {}.{}", row.username, created.secret.expose());
                    }
                    println!("  scopes:   {}", row.scopes.join(","));
                    println!("Store the secret now: payvault keeps only its hash and cannot show it again.");
                }
            }
        }
        CredentialsCommand::List { all, format } => {
            let rows = admin::list_credentials(&pool, signer, all).await?;
            match format.format {
                Format::Json => {
                    for row in rows {
                        let out = serde_json::json!({
                            "id": row.id, "name": row.name, "kind": row.kind,
                            "username": row.username, "scopes": row.scopes,
                            "tenant_id": row.tenant_id,
                            "created_at": row.created_at, "revoked_at": row.revoked_at,
                        });
                        println!("{out}");
                    }
                }
                Format::Text => {
                    println!(
                        "{:<26} {:<20} {:<10} {:<40} {:<25} REVOKED",
                        "USERNAME", "NAME", "KIND", "SCOPES", "CREATED"
                    );
                    for row in rows {
                        println!(
                            "{:<26} {:<20} {:<10} {:<40} {:<25} {}",
                            row.username,
                            row.name,
                            row.kind,
                            row.scopes.join(","),
                            row.created_at.format("%Y-%m-%d %H:%M:%S UTC"),
                            row.revoked_at.map_or("-".to_owned(), |t| t
                                .format("%Y-%m-%d %H:%M:%S UTC")
                                .to_string()),
                        );
                    }
                }
            }
        }
        CredentialsCommand::Revoke { username_or_name } => {
            let row = admin::revoke_credential(&pool, signer, &username_or_name).await?;
            println!(
                "Revoked {} credential `{}` ({})",
                row.kind, row.name, row.username
            );
        }
    }
    seal_before_exit(&log).await;
    Ok(())
}
