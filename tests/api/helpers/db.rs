//! Test databases: the server that hosts them, one fresh migrated database per test, and
//! sealing the audit log.

use std::time::Duration;

use payvault::crypto::KeyRing;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};

/// The server that hosts test databases. `PAYVAULT_TEST_DATABASE_URL` overrides the default
/// local trust-authenticated PostgreSQL.
pub fn admin_url() -> String {
    std::env::var("PAYVAULT_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

fn url_for(db: &str) -> String {
    let admin = admin_url();
    let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
    format!("{base}/{db}")
}

/// A fresh, migrated database that is dropped when this value is.
pub struct TestDb {
    pub name: String,
    pub pool: PgPool,
}

impl TestDb {
    pub async fn new() -> Self {
        let name = format!("payvault_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&admin_url()).await.expect(
            "tests need PostgreSQL: set PAYVAULT_TEST_DATABASE_URL or run one on 127.0.0.1:5432",
        );
        sqlx::query(&format!(r#"CREATE DATABASE "{name}""#))
            .execute(&mut admin)
            .await
            .unwrap();
        let pool = PgPoolOptions::new()
            .max_connections(5)
            .connect(&url_for(&name))
            .await
            .unwrap();
        payvault::store::migrate(&pool).await.unwrap();
        Self { name, pool }
    }

    pub fn url(&self) -> String {
        url_for(&self.name)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs inside the test's runtime (possibly while unwinding); use a thread of our own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(mut admin) = PgConnection::connect(&admin_url()).await {
                    let _ =
                        sqlx::query(&format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#))
                            .execute(&mut admin)
                            .await;
                }
            });
        })
        .join();
    }
}

/// Seals every audit event, waiting for a server's own sealer if it holds the lock right now.
pub async fn seal_all(pool: &PgPool, keys: &KeyRing) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        payvault::audit::seal::seal_pending(pool, keys)
            .await
            .unwrap();
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_unsealed")
            .fetch_one(pool)
            .await
            .unwrap();
        if left == 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "audit events were not sealed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
