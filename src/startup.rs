//! Builds and runs the HTTP service. One code path for production and tests: tests bind port 0
//! and pass their own shutdown future.

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use axum::Router;
use sqlx::PgPool;
use tokio::net::TcpListener;

use crate::auth::Authenticator;
use crate::charge::Charger;
use crate::crypto::KeyRing;
use crate::http::{router, AppState, TrustedProxies};
use crate::processor::Processor;
use crate::vault::Vault;

/// Runtime settings the service needs once configuration is parsed.
#[derive(Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
    pub auth_cache_ttl: Duration,
    pub processor: Arc<dyn Processor>,
    /// Total processor timeout; in-flight leases last this plus a margin.
    pub processor_timeout: Duration,
    /// How long a retry waits for an in-flight attempt (below Twilio's 10 s).
    pub idempotency_wait: Duration,
    pub trusted_proxies: TrustedProxies,
    /// How often this instance's sealer looks for unsealed audit events.
    pub seal_interval: Duration,
    /// Tokens expire this many days after creation unless a request says otherwise.
    pub default_token_ttl_days: Option<u32>,
    /// Return the existing token when a credential tokenizes a card it already vaulted.
    pub dedup: bool,
    /// How long in-flight requests may run after a shutdown signal.
    pub shutdown_grace: Duration,
    /// Serve HTTPS with this acceptor; plain HTTP when `None`.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

/// Margin added to the processor timeout before an in-flight attempt is presumed dead.
const LEASE_MARGIN: Duration = Duration::from_secs(5);

pub struct Application {
    listener: TcpListener,
    router: Router,
    auth: Arc<Authenticator>,
    vault: Vault,
    seal_interval: Duration,
    shutdown_grace: Duration,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl Application {
    /// Binds the listener; nothing is served until [`Application::run`].
    pub async fn build(
        settings: &Settings,
        pool: PgPool,
        keys: Arc<KeyRing>,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(settings.listen).await?;
        crate::http::ops::metrics_handle();
        let auth = Arc::new(Authenticator::new(pool.clone(), settings.auth_cache_ttl));
        let vault = Vault::new(pool.clone(), keys).with_dedup(settings.dedup);
        let seal_interval = settings.seal_interval;
        let charger = Charger {
            vault: vault.clone(),
            pool,
            processor: settings.processor.clone(),
            wait: settings.idempotency_wait,
            lease: settings.processor_timeout + LEASE_MARGIN,
            processor_timeout: settings.processor_timeout,
        };
        let state = AppState {
            vault: vault.clone(),
            charger,
            auth: auth.clone(),
            max_body_bytes: settings.max_body_bytes,
            trusted_proxies: Arc::new(settings.trusted_proxies.clone()),
            expiry: crate::http::twilio::ExpiryPolicy {
                default_ttl_days: settings.default_token_ttl_days,
            },
            auth_failures: Arc::new(crate::http::FailureLimiter::new(
                crate::http::AUTH_FAILURE_AUDITS_PER_SECOND,
            )),
        };
        Ok(Self {
            listener,
            router: router(state),
            auth,
            vault,
            seal_interval,
            shutdown_grace: settings.shutdown_grace,
            tls: settings.tls.clone(),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes, then lets in-flight requests finish.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let follower = tokio::spawn(self.auth.clone().follow_changes());
        let purger = tokio::spawn(crate::vault::run_expiry_purge(
            self.vault.pool().clone(),
            Duration::from_secs(60),
        ));
        let sealer = tokio::spawn(crate::audit::seal::run_sealer(
            self.vault.pool().clone(),
            self.vault.keys_arc(),
            self.seal_interval,
        ));
        let service = self
            .router
            .into_make_service_with_connect_info::<SocketAddr>();
        // After the signal, in-flight requests get `grace` to finish; then the process stops.
        let (signalled, on_signal) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async move {
            shutdown.await;
            let _ = signalled.send(());
        };
        // `tap_io` gives both listeners the `SocketAddr` connect info the handlers read.
        let serve: std::pin::Pin<Box<dyn Future<Output = std::io::Result<()>> + Send>> =
            match self.tls {
                None => {
                    let listener = self.listener.tap_io(|tcp| {
                        // Replies are written whole; do not let Nagle hold them back.
                        let _ = tcp.set_nodelay(true);
                    });
                    Box::pin(
                        axum::serve(listener, service)
                            .with_graceful_shutdown(shutdown)
                            .into_future(),
                    )
                }
                Some(acceptor) => {
                    let listener =
                        crate::http::tls::TlsListener::new(self.listener, acceptor)?.tap_io(|_| {});
                    Box::pin(
                        axum::serve(listener, service)
                            .with_graceful_shutdown(shutdown)
                            .into_future(),
                    )
                }
            };
        let grace = self.shutdown_grace;
        let result = tokio::select! {
            result = serve => result,
            () = async move {
                if on_signal.await.is_ok() {
                    tokio::time::sleep(grace).await;
                } else {
                    std::future::pending::<()>().await;
                }
            } => {
                tracing::warn!(grace_secs = grace.as_secs(), "in-flight requests did not finish within the grace period");
                Ok(())
            }
        };
        follower.abort();
        sealer.abort();
        purger.abort();
        // Seal what the last requests wrote, so a stopped instance leaves nothing behind.
        if let Err(e) = crate::audit::seal::seal_pending(self.vault.pool(), self.vault.keys()).await
        {
            tracing::warn!(error = %e, "final audit sealing failed; another instance will seal");
        }
        result
    }
}

/// Completes on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown signal received; finishing in-flight requests");
}
