//! The one launch path. `payvault serve`, `payvault dev` and every test call [`launch`] with a
//! bound listener and a shutdown future; it reads top to bottom: refuse unsafe production
//! settings, connect, refuse a production role that owns the audit log, migrate (when asked), load keys, build the processor, audit the start,
//! serve, drain, audit the stop, and seal the audit log once.

pub mod keys;
mod sealed;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::PgPool;
use tokio::net::TcpListener;

pub use keys::KeySource;

use crate::audit::{AuditEvent, AuditLog};
use crate::auth::{admin, Authenticator, CredentialKind, FailureAudit, Scope};
use crate::charge::Charger;
use crate::config::{self, ProcessorConfig, ServeConfig};
use crate::crypto::KeyState;
use crate::http::{AppState, TrustedProxies};
use crate::processor::profile::ProfileProcessor;
use crate::processor::sandbox::Sandbox;
use crate::processor::{Processor, Unconfigured};
use crate::store;
use crate::store::audit_mac::EventSigner;
use crate::vault::Vault;

/// How often expired tokens are looked for.
const EXPIRY_PURGE_INTERVAL: Duration = Duration::from_secs(60);
/// How often idempotency answers past their retention are purged.
const IDEMPOTENCY_PURGE_INTERVAL: Duration = Duration::from_secs(300);

/// What [`launch`] serves: the parsed configuration and where the master keys come from.
pub struct Service {
    pub config: ServeConfig,
    pub keys: KeySource,
    /// Apply pending migrations before serving (`serve` unless `--no-migrate`).
    pub migrate: bool,
}

/// Runs the service on `listener` until `shutdown` completes, then lets in-flight requests
/// finish (within the configured grace), audits the stop and seals what is left.
/// `on_ready` is called once, when requests are about to be accepted.
pub async fn launch(
    service: Service,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(SocketAddr),
) -> anyhow::Result<()> {
    let Service {
        config: mut cfg,
        keys,
        migrate,
    } = service;
    let mut refusals = cfg.production_refusals(keys.has_development_key());
    refusals.extend(keys::production_refusals(&keys, cfg.environment)?);
    if !refusals.is_empty() {
        anyhow::bail!(
            "PAYVAULT_ENV=production refuses to start:\n  - {}",
            refusals.join("\n  - ")
        );
    }
    if cfg.environment == config::Environment::Development {
        for reason in cfg.unknown_processor_variable_reasons() {
            tracing::warn!("{reason}");
        }
    }
    let tls = match &cfg.tls {
        Some(files) => Some(crate::http::tls::acceptor(&files.cert, &files.key)?),
        None => None,
    };
    let trusted_proxies = TrustedProxies::parse(&cfg.trusted_proxies)
        .map_err(|e| anyhow::anyhow!("PAYVAULT_TRUSTED_PROXIES: {e}"))?;
    // A checkpoint file that cannot be appended to stops the start (PAYVAULT_AUDIT_CHECKPOINT_FILE).
    let checkpoints = Arc::new(tokio::sync::Mutex::new(
        crate::audit::checkpoint::Publisher::new(cfg.checkpoint_file.clone())?,
    ));
    // The processor first: a setting it refuses (a profile's auth) stops the start before the
    // database is touched.
    let processor = build_processor(
        std::mem::replace(&mut cfg.processor, ProcessorConfig::None),
        &cfg,
    )?;
    let pool = store::connect_with_timeout(
        &cfg.database_url,
        cfg.db_max_connections,
        cfg.db_acquire_timeout,
    )
    .await
    .context("cannot connect to the database")?;
    // Least privilege (PCI DSS 7.2, 10.3.2): in production payvault serves as a runtime role that
    // can neither rewrite nor stop the audit log; only a role that owns the schema migrates.
    let role = store::roles::session_role(&pool)
        .await
        .context("cannot read the database role")?;
    if cfg.environment == config::Environment::Production {
        let refusals = role.production_refusals();
        if !refusals.is_empty() {
            anyhow::bail!(
                "PAYVAULT_ENV=production refuses to start:\n  - {}",
                refusals.join("\n  - ")
            );
        }
    }
    if migrate {
        if role.may_migrate() {
            store::migrate(&pool).await.context("migration failed")?;
        } else {
            // The runtime role cannot change the schema: a current one is all it needs.
            if !store::schema_current(&pool).await {
                anyhow::bail!(
                    "the database schema is not current and database role {} does not own it, so it cannot migrate it: run `payvault migrate` connected as the owner ({})",
                    role.name,
                    role.audit_owner.as_deref().unwrap_or("?")
                );
            }
        }
    }
    let key_provider = keys.provider().cloned();
    let (key_state, unsealer) = match keys {
        // Split custodians: sealed until K shares are submitted (`payvault unseal`).
        KeySource::Provider {
            provider: crate::custody::KeyProvider::Shares(shares),
            audit_keys,
        } => {
            let state = KeyState::sealed();
            let signer = Arc::new(EventSigner::with_key_state(state.clone()));
            let unsealer = sealed::start(&pool, shares, audit_keys, signer.clone()).await?;
            (signer, Some(unsealer))
        }
        keys => {
            if let Some(provider) = &key_provider {
                tracing::info!(provider = provider.name(), root = %provider.describe(), "unwrapping the master keys with the key provider");
            }
            let keys = keys.load(&pool).await?;
            (Arc::new(EventSigner::new(keys)), None)
        }
    };
    // This process's one audit event writer (see store::audit_mac): it holds standalone
    // events while the instance is sealed (see store::audit_held).
    let (signer, key_state) = (key_state.clone(), key_state.key_state().clone());
    if let Some(credential) = cfg.dev_connector_credential.take() {
        // Its audit event is written in the credential's transaction: once there are keys.
        let (pool, signer) = (pool.clone(), signer.clone());
        let ensured = async move {
            signer.key_state().wait().await;
            ensure_dev_connector(&pool, &signer, &credential).await
        };
        if key_state.is_sealed() {
            tokio::spawn(async move {
                if let Err(e) = ensured.await {
                    tracing::error!(error = %e, "could not create the development connector credential");
                }
            });
        } else {
            ensured.await?;
        }
    }

    // Start and stop of the service are audited (PCI DSS 10.2.1.6: start of audit logging).
    let addr = listener.local_addr()?;
    let versions: Vec<i32> = key_state
        .get()
        .map(|keys| keys.versions().collect())
        .unwrap_or_default();
    let instance = serde_json::json!({
        "sealed": key_state.is_sealed(),
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "listen": addr.to_string(),
        "key_versions": versions,
    });
    signer
        .record(
            &pool,
            &AuditEvent::system("service_start", instance.clone()),
        )
        .await
        .context("cannot write the audit log")?;

    crate::http::ops::metrics_handle();
    let auth = Arc::new(Authenticator::new(pool.clone(), cfg.auth_cache_ttl));
    let auth_failures = Arc::new(FailureAudit::new(
        crate::http::AUTH_FAILURE_AUDITS_PER_SECOND,
    ));
    let vault = Vault::with_signer(pool.clone(), signer.clone()).with_dedup(cfg.dedup);
    let tenant_processors = Arc::new(load_tenant_processors(&pool, &cfg).await?);
    let charger = Charger {
        pool: pool.clone(),
        vault: vault.clone(),
        processor,
        tenant_processors,
        wait: cfg.idempotency_wait,
        lease: cfg.charge_lease,
        heartbeat: cfg.charge_heartbeat,
        processor_timeout: cfg.processor_timeout,
    };
    let state = AppState {
        vault,
        charger,
        audit: AuditLog::new(pool.clone(), signer.clone()),
        audit_max_unsealed: cfg.audit_max_unsealed,
        auth: auth.clone(),
        max_body_bytes: cfg.max_body_bytes,
        trusted_proxies: Arc::new(trusted_proxies),
        expiry: crate::domain::ExpiryPolicy {
            default_ttl_days: cfg.default_token_ttl_days,
        },
        auth_failures: auth_failures.clone(),
        key_provider,
        unsealer,
    };

    let background = [
        tokio::spawn(auth.follow_changes()),
        tokio::spawn(auth_failures.clone().run(
            pool.clone(),
            signer.clone(),
            cfg.auth_failure_audit_interval,
        )),
        tokio::spawn(crate::vault::run_expiry_purge(
            pool.clone(),
            signer.clone(),
            EXPIRY_PURGE_INTERVAL,
        )),
        tokio::spawn(crate::vault::run_idempotency_purge(
            pool.clone(),
            cfg.idempotency_retention,
            IDEMPOTENCY_PURGE_INTERVAL,
        )),
        // Audit sealing and checkpoints need the master keys: sealed, they start once unsealed,
        // as does writing the events held meanwhile.
        tokio::spawn(crate::audit::seal::run_sealer(
            pool.clone(),
            signer.clone(),
            cfg.seal_interval,
        )),
        tokio::spawn({
            let (pool, key_state, checkpoints) =
                (pool.clone(), key_state.clone(), checkpoints.clone());
            async move {
                let keys = key_state.wait().await;
                crate::audit::checkpoint::run(pool, keys, checkpoints, cfg.checkpoint_interval)
                    .await;
            }
        }),
        tokio::spawn(release_held_events(pool.clone(), signer.clone())),
    ];
    tracing::info!(
        %addr,
        key_versions = ?versions,
        tls = tls.is_some(),
        environment = ?cfg.environment,
        "payvault ready"
    );
    let limits = crate::http::serve::Limits {
        header_read_timeout: cfg.header_read_timeout,
        idle_timeout: cfg.idle_timeout,
        max_connections: cfg.max_connections,
    };
    // `/metrics` (and a copy of `/openapi.json`) on a listener of its own, when configured; the
    // public listener then no longer serves `/metrics`.
    let admin = match cfg.admin_listen {
        None => None,
        Some(admin_addr) => {
            let admin_listener = TcpListener::bind(admin_addr)
                .await
                .with_context(|| format!("PAYVAULT_ADMIN_LISTEN: cannot listen on {admin_addr}"))?;
            tracing::info!(addr = %admin_listener.local_addr()?, "admin listener (metrics) ready");
            Some(admin_listener)
        }
    };
    let (stopping, stop_signal) = tokio::sync::watch::channel(false);
    let admin_task = admin.map(|admin_listener| {
        let mut stop_signal = stop_signal.clone();
        tokio::spawn(crate::http::serve::serve(
            admin_listener,
            crate::http::admin_router(state.clone()),
            None,
            limits,
            async move {
                let _ = stop_signal.wait_for(|stop| *stop).await;
            },
            Duration::from_secs(1),
        ))
    });
    let router = crate::http::router_with(state, admin_task.is_none());
    on_ready(addr);
    let served =
        crate::http::serve::serve(listener, router, tls, limits, shutdown, cfg.shutdown_grace)
            .await;
    let _ = stopping.send(true);
    if let Some(task) = admin_task {
        let _ = task.await;
    }
    for task in background {
        task.abort();
    }
    if let Err(e) = auth_failures.flush(&pool, &signer).await {
        tracing::warn!(error = %e, "could not write the last failed-login audit aggregate");
    }
    stop(&pool, &signer, instance).await;
    let keys = key_state.get().ok();
    // The last checkpoint covers the stop and what the last requests wrote.
    if let Some(keys) = keys {
        if let Err(e) = checkpoints.lock().await.publish(&pool, keys).await {
            tracing::warn!(error = %e, "could not publish the last audit checkpoint");
        }
    }
    served?;
    tracing::info!("payvault stopped");
    Ok(())
}

/// Audits the stop and seals what the last requests wrote, so a stopped instance leaves
/// nothing unsealed behind. Failures are logged: the next instance seals. An instance that was
/// never unsealed cannot MAC: the events it held (the stop's included) are lost, and counted.
async fn stop(pool: &PgPool, signer: &EventSigner, mut instance: serde_json::Value) {
    // The writer's last counter value, so a deletion of its newest events shows as a gap.
    instance["writer_id"] = signer.writer_id().to_string().into();
    instance["writer_last_seq"] = (signer.last_seq() + 1).into();
    let event = AuditEvent::system("service_stop", instance);
    if let Err(e) = signer.record(pool, &event).await {
        tracing::warn!(error = %e, "could not audit the service stop");
    }
    let Ok(keys) = signer.keys() else {
        let lost = signer.abandon_held().await;
        tracing::warn!(
            held = lost.held,
            dropped = lost.dropped,
            "stopping sealed: {} audit events (this stop included) could not be written without the master keys and are lost",
            lost.held as u64 + lost.dropped
        );
        return;
    };
    if let Err(e) = signer.flush_voids(pool).await {
        tracing::warn!(error = %e, "could not record voided audit counter values");
    }
    if let Err(e) = crate::audit::seal::seal_pending(pool, keys).await {
        tracing::warn!(error = %e, "could not seal the last audit events; the next instance will");
    }
}

/// Once unsealed, writes the audit events held while sealed (retrying while the database
/// refuses; the next standalone event also writes them).
async fn release_held_events(pool: PgPool, signer: Arc<EventSigner>) {
    signer.key_state().wait().await;
    loop {
        match signer.release(&pool).await {
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(error = %e, "could not write the audit events held while sealed; will retry");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// The processors of tenants that have their own, built from the environment variables under
/// each tenant's prefix. A setting the processor refuses, or (in production) a sandbox or a
/// plain-HTTP profile, stops the start, naming the tenant.
async fn load_tenant_processors(
    pool: &PgPool,
    cfg: &ServeConfig,
) -> anyhow::Result<std::collections::HashMap<uuid::Uuid, Arc<dyn Processor>>> {
    let mut processors = std::collections::HashMap::new();
    let chosen = store::tenants::tenant_processors(pool)
        .await
        .context("cannot read the tenants' processors")?;
    for (id, name, processor, prefix) in chosen {
        let config = config::tenant_processor_config(&processor, &prefix)
            .with_context(|| format!("tenant `{name}`'s processor `{processor}`"))?;
        if cfg.environment == config::Environment::Production {
            if let Some(why) = config::tenant_processor_production_refusal(&config) {
                anyhow::bail!("PAYVAULT_ENV=production refuses tenant `{name}`'s processor: {why}");
            }
        }
        tracing::info!(tenant = %name, processor = %processor, "tenant charges through its own processor");
        processors.insert(id, build_processor(config, cfg)?);
    }
    Ok(processors)
}

fn build_processor(
    processor: ProcessorConfig,
    cfg: &ServeConfig,
) -> anyhow::Result<Arc<dyn Processor>> {
    Ok(match processor {
        ProcessorConfig::None => Arc::new(Unconfigured),
        ProcessorConfig::Sandbox => {
            tracing::warn!("using the built-in SANDBOX processor: no real money moves");
            Arc::new(Sandbox::new(cfg.sandbox_slow))
        }
        ProcessorConfig::Profile(profile) => {
            tracing::info!(
                profile = %profile.profile.name,
                environment = ?profile.environment,
                url = %profile.base_url,
                "charges go to a processor profile"
            );
            Arc::new(ProfileProcessor::new(
                profile,
                cfg.processor_connect_timeout,
                cfg.processor_timeout,
            )?)
        }
    })
}

/// `PAYVAULT_DEV_CONNECTOR_CREDENTIAL` (`username:password`): a connector credential for
/// development set-ups whose curl examples need a known password.
async fn ensure_dev_connector(
    pool: &PgPool,
    signer: &EventSigner,
    credential: &config::DevCredential,
) -> anyhow::Result<()> {
    let created = admin::ensure_credential(
        pool,
        signer,
        "dev-connector",
        CredentialKind::Connector,
        vec![Scope::Connector, Scope::TokensCharge],
        &credential.username,
        crate::domain::SecretText::new(credential.password.expose().to_owned()),
    )
    .await
    .context("PAYVAULT_DEV_CONNECTOR_CREDENTIAL")?;
    if created {
        tracing::warn!("created the DEVELOPMENT connector credential `dev-connector`");
    }
    Ok(())
}

/// Completes on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown signal received; finishing in-flight requests");
}
