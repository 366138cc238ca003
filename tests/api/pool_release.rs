//! What a connection returned to payvault's pool must not keep or carry to its next user.
//! sqlx-core is patched (vendor/README.md) to flush a released connection instead of pinging it:
//! these are the two things that release step is for, each through a pool of one connection, so
//! the next checkout gets the very connection just released.

use std::time::Duration;

use sqlx::Connection;

use crate::helpers::TestDb;
use payvault::domain::secret::SecretText;

async fn pool_of_one(db: &TestDb) -> sqlx::PgPool {
    payvault::store::connect(&SecretText::new(db.url()), 1)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_dropped_transaction_is_rolled_back_when_its_connection_is_released() {
    let db = TestDb::unmigrated().await;
    let pool = pool_of_one(&db).await;
    sqlx::query("CREATE TABLE t (v int)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO t VALUES (1)")
        .execute(&pool)
        .await
        .unwrap();
    {
        let mut tx = pool.begin().await.unwrap();
        sqlx::query("UPDATE t SET v = 2")
            .execute(&mut *tx)
            .await
            .unwrap();
        // Dropped without commit, holding the row's lock: sqlx queues a ROLLBACK.
    }
    // The release runs in the background: wait until the connection is back in the pool.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while pool.num_idle() < 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the connection never came back"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Rolled back at release, not at the connection's next use: the lock is free now, for
    // anyone (an idle pooled connection would otherwise hold it for as long as it sat idle).
    let mut other = sqlx::PgConnection::connect(&db.url()).await.unwrap();
    let v: i32 = sqlx::query_scalar("SELECT v FROM t FOR UPDATE NOWAIT")
        .fetch_one(&mut other)
        .await
        .expect("the dropped transaction still holds its row lock");
    assert_eq!(v, 1, "the dropped transaction's update was not rolled back");
}

#[tokio::test]
async fn a_query_dropped_midway_leaves_nothing_for_the_next_user() {
    let db = TestDb::unmigrated().await;
    let pool = pool_of_one(&db).await;
    // The future is dropped after the query was sent and before its reply was read.
    let dropped = tokio::time::timeout(
        Duration::from_millis(50),
        sqlx::query_scalar::<_, i32>("SELECT 7 FROM pg_sleep(0.5)").fetch_one(&pool),
    )
    .await;
    assert!(
        dropped.is_err(),
        "the slow query was expected to be cut off"
    );
    // The next user of the same connection reads its own answer, not the dropped query's.
    for n in [1, 2, 3] {
        let got: i32 = sqlx::query_scalar("SELECT $1")
            .bind(n)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(got, n);
    }
}
