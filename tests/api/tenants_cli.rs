//! `payvault tenants` and the `--tenant` options of `credentials create` and `audit list`, as an
//! operator runs them.

use std::process::{Command, Output};

use serde_json::Value;

use crate::helpers::TestDb;

/// The master key these commands MAC their audit events with (one for the whole file: each
/// test's database records it on first use).
fn master_key() -> &'static str {
    static KEY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    KEY.get_or_init(|| {
        payvault::crypto::MasterKey::generate(1)
            .encode()
            .as_str()
            .to_owned()
    })
}

fn payvault(db: &TestDb, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_payvault"))
        .args(args)
        .env_remove("DATABASE_URL_FILE")
        .env_remove("PAYVAULT_MASTER_KEY_FILE")
        .env("DATABASE_URL", db.url())
        .env("PAYVAULT_MASTER_KEY", master_key())
        .output()
        .unwrap()
}

fn json_lines(o: &Output) -> Vec<Value> {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn refused(o: &Output, why: &str) {
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && stderr.contains(why), "{stderr}");
}

#[tokio::test]
async fn tenants_create_list_disable_and_their_credentials_and_audit() {
    let db = TestDb::new().await;
    let created = &json_lines(&payvault(
        &db,
        &["tenants", "create", "brand-a", "--format", "json"],
    ))[0];
    assert_eq!(created["status"], "active");
    refused(
        &payvault(&db, &["tenants", "create", "brand-a"]),
        "already exists",
    );
    refused(
        &payvault(&db, &["tenants", "create", "brand a"]),
        "invalid tenant name",
    );

    let cred = &json_lines(&payvault(
        &db,
        &[
            "credentials",
            "create",
            "--tenant",
            "brand-a",
            "--name",
            "a-twilio",
            "--kind",
            "connector",
            "--format",
            "json",
        ],
    ))[0];
    assert_eq!(cred["tenant"], "brand-a");
    let tenant: uuid::Uuid =
        sqlx::query_scalar("SELECT tenant_id FROM credentials WHERE username = $1")
            .bind(cred["username"].as_str().unwrap())
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(tenant.to_string(), created["id"].as_str().unwrap());
    refused(
        &payvault(
            &db,
            &[
                "credentials",
                "create",
                "--tenant",
                "nope",
                "--name",
                "x",
                "--kind",
                "connector",
            ],
        ),
        "no tenant named `nope`",
    );

    let names: Vec<Value> = json_lines(&payvault(&db, &["tenants", "list", "--format", "json"]))
        .into_iter()
        .map(|t| t["name"].clone())
        .collect();
    assert_eq!(names, [Value::from("default"), Value::from("brand-a")]);

    // The tenant's own audit trail: its creation and its credential's, nothing of the default
    // tenant's (the `tenants list` above, say).
    let actions: Vec<Value> = json_lines(&payvault(
        &db,
        &["audit", "list", "--tenant", "brand-a", "--format", "json"],
    ))
    .into_iter()
    .map(|e| e["action"].clone())
    .collect();
    assert_eq!(
        actions,
        [
            Value::from("tenant_create"),
            Value::from("credential_create")
        ]
    );
    refused(
        &payvault(&db, &["audit", "list", "--tenant", "nope"]),
        "no tenant named `nope`",
    );

    assert!(payvault(&db, &["tenants", "disable", "brand-a"])
        .status
        .success());
    refused(
        &payvault(
            &db,
            &[
                "credentials",
                "create",
                "--tenant",
                "brand-a",
                "--name",
                "late",
                "--kind",
                "connector",
            ],
        ),
        "no active tenant named `brand-a`",
    );
    refused(
        &payvault(&db, &["tenants", "disable", "default"]),
        "cannot be disabled",
    );
    refused(
        &payvault(&db, &["tenants", "disable", "brand-a"]),
        "no active tenant",
    );
}
