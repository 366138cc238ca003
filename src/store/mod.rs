//! Every SQL statement payvault runs lives under this module, checked at compile time against
//! the schema in `migrations/` (offline data in `.sqlx/`). Functions are named for intent and
//! take an executor, so they compose inside a caller's transaction.

pub mod audit;
pub mod charges;
pub mod credentials;
pub mod keys;
pub mod seals;
pub mod vault;

use std::time::Duration;

use crate::domain::SecretText;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

/// A pooled connection idle for longer than this is pinged before use.
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(5);

/// Opens a connection pool. Connections are opened lazily, so this succeeds with the database
/// down; `/readyz` and the first query tell.
pub fn connect_lazy(url: &SecretText, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    let options: PgConnectOptions = url.expose().parse()?;
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        // By default sqlx pings every connection it hands out: one more round trip per query.
        // A connection in steady use is known to work (sqlx also pings each one on release and
        // drops it if broken); only one idle long enough for a server or proxy to have dropped
        // it is pinged first.
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for > PING_IF_IDLE_FOR {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
        .connect_lazy_with(options))
}

/// Opens a pool and checks the database answers.
pub async fn connect(url: &SecretText, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    let pool = connect_lazy(url, max_connections)?;
    pool.acquire().await?;
    Ok(pool)
}

/// The newest applied migration, if any: `Err` when the database cannot be reached.
pub async fn applied_migration(pool: &PgPool) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar::<_, Option<i64>>("SELECT max(version) FROM _sqlx_migrations WHERE success")
        .fetch_one(pool)
        .await
}

/// Applies pending migrations. Safe to run from several instances at once: sqlx takes an
/// advisory lock.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}
