//! Every SQL statement payvault runs lives under this module, checked at compile time against
//! the schema in `migrations/` (offline data in `.sqlx/`). Functions are named for intent and
//! take an executor, so they compose inside a caller's transaction.

pub mod audit;
pub mod audit_checks;
pub mod audit_held;
pub mod audit_mac;
pub mod charges;
pub mod checkpoints;
pub mod credentials;
pub mod idempotency;
pub mod imports;
pub mod keys;
pub mod roles;
pub mod rotation;
pub mod seals;
pub mod shares;
pub mod tenants;
pub mod vault;

use std::time::Duration;

use crate::domain::SecretText;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

/// A pooled connection idle for longer than this is pinged before use.
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(5);

/// How long a request waits for a pooled connection by default (`PAYVAULT_DB_ACQUIRE_TIMEOUT_MS`):
/// when the database refuses connections, sqlx retries until then, so this is also how soon
/// such a request is answered `internal_error`. Well inside Twilio's 10 s.
pub const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the database could not be reached at start. Never includes the URL (it may hold a
/// password); the scheme, host and port are not secret.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("unsupported database URL scheme `{0}`: use postgres:// or postgresql://")]
    Scheme(String),
    #[error("the database URL is not a postgres:// URL")]
    NotUrl,
    #[error("connection refused at {0}")]
    Refused(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Parses the URL, naming an unsupported scheme instead of sqlx's generic complaint.
fn connect_options(url: &SecretText) -> Result<PgConnectOptions, ConnectError> {
    let Some((scheme, _)) = url.expose().split_once("://") else {
        return Err(ConnectError::NotUrl);
    };
    if !matches!(scheme, "postgres" | "postgresql") {
        let printable = scheme.len() <= 20
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
        return Err(if printable {
            ConnectError::Scheme(scheme.to_owned())
        } else {
            ConnectError::NotUrl
        });
    }
    Ok(url.expose().parse()?)
}

/// Opens a connection pool. Connections are opened lazily, so this succeeds with the database
/// down; `/readyz` and the first query tell.
pub fn connect_lazy(url: &SecretText, max_connections: u32) -> Result<PgPool, ConnectError> {
    Ok(pool_options(max_connections, DEFAULT_ACQUIRE_TIMEOUT)
        .connect_lazy_with(connect_options(url)?))
}

fn pool_options(max_connections: u32, acquire_timeout: Duration) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(acquire_timeout)
        // By default sqlx pings every connection it hands out: one more round trip per query.
        // A connection in steady use is known to work; only one idle long enough for a server
        // or proxy to have dropped it is pinged first. (On release, upstream sqlx pings too; our
        // patched sqlx-core only finishes what is pending on it: vendor/README.md.)
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for > PING_IF_IDLE_FOR {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
}

/// Opens a pool and checks the database answers (default acquire timeout).
pub async fn connect(url: &SecretText, max_connections: u32) -> Result<PgPool, ConnectError> {
    connect_with_timeout(url, max_connections, DEFAULT_ACQUIRE_TIMEOUT).await
}

/// Opens a pool whose requests wait at most `acquire_timeout` for a connection, after checking
/// with one direct connection that the database answers: the pool would retry a refused
/// connection until its timeout and then say only "pool timed out".
pub async fn connect_with_timeout(
    url: &SecretText,
    max_connections: u32,
    acquire_timeout: Duration,
) -> Result<PgPool, ConnectError> {
    let options = connect_options(url)?;
    match sqlx::ConnectOptions::connect(&options).await {
        Ok(conn) => {
            let _ = sqlx::Connection::close(conn).await;
        }
        Err(sqlx::Error::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            return Err(ConnectError::Refused(format!(
                "{}:{}",
                options.get_host(),
                options.get_port()
            )));
        }
        Err(e) => return Err(e.into()),
    }
    Ok(pool_options(max_connections, acquire_timeout).connect_lazy_with(options))
}

/// The newest applied migration, if any: `Err` when the database cannot be reached.
pub async fn applied_migration(pool: &PgPool) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar::<_, Option<i64>>("SELECT max(version) FROM _sqlx_migrations WHERE success")
        .fetch_one(pool)
        .await
}

/// Whether every migration this build knows has been applied (`false` also when the history
/// cannot be read: no schema yet).
pub async fn schema_current(pool: &PgPool) -> bool {
    let latest = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    matches!(applied_migration(pool).await, Ok(Some(v)) if v >= latest)
}

/// Applies pending migrations. Safe to run from several instances at once: sqlx takes an
/// advisory lock.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}
