//! The one serving path, plain HTTP or HTTPS: an accept loop that holds at most
//! `max_connections` connections (further ones wait in the kernel's listen backlog until one
//! closes), and per connection a watchdog that closes it when a request head is not complete
//! within the header-read timeout (slowloris) or when it sits idle between requests for the idle
//! timeout. Requests run on hyper's HTTP/1.1 server with the router as service; each gets the
//! peer address as axum's `ConnectInfo`.
//!
//! hyper answers a request it cannot parse (a control byte in a header value, a malformed request
//! line, a head too large) itself, with an empty 400 (or 414, 431) that no service sees.
//! [`Watched`] recognises that automatic answer on the wire and replaces it with the same status
//! and a JSON body.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tower::Service;

/// Connection limits (`PAYVAULT_HEADER_READ_TIMEOUT_SECS`, `PAYVAULT_IDLE_TIMEOUT_SECS`,
/// `PAYVAULT_MAX_CONNECTIONS`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// From accept (for the first request: it includes the TLS handshake) or from a request's
    /// first byte, until its head is complete.
    pub header_read_timeout: Duration,
    /// Between the end of a response and the first byte of the next request.
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

/// Serves `router` on `listener` (HTTPS when `tls` is given) until `shutdown`; then stops
/// accepting, asks open connections to finish their current request and close, and waits for
/// them up to `grace`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        // A slot first: beyond the limit, connections wait in the backlog, unaccepted.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot,
            () = &mut shutdown => break,
        };
        let Ok(slot) = slot else { break };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Replies are written whole; do not let Nagle hold them back.
        let _ = tcp.set_nodelay(true);
        let (router, tls, watcher) = (router.clone(), tls.clone(), graceful.watcher());
        tokio::spawn(async move {
            connection(tcp, peer, router, tls, limits, watcher).await;
            drop(slot);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(grace) => {
            tracing::warn!(grace_secs = grace.as_secs(), "in-flight requests did not finish within the grace period");
        }
    }
    Ok(())
}

async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    router: Router,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    watcher: hyper_util::server::graceful::Watcher,
) {
    let activity = Arc::new(Activity::new());
    match tls {
        None => serve_connection(tcp, peer, router, limits, activity, watcher).await,
        Some(acceptor) => {
            let handshake = tokio::time::timeout(limits.header_read_timeout, acceptor.accept(tcp));
            match handshake.await {
                Ok(Ok(stream)) => {
                    serve_connection(stream, peer, router, limits, activity, watcher).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        }
    }
}

async fn serve_connection<IO>(
    io: IO,
    peer: SocketAddr,
    router: Router,
    limits: Limits,
    activity: Arc<Activity>,
    watcher: hyper_util::server::graceful::Watcher,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(Watched::new(io, activity.clone()));
    let service_activity = activity.clone();
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        let mut router = router.clone();
        let request = RequestGuard::begin(service_activity.clone());
        async move {
            let response = router.call(req).await;
            drop(request);
            response
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    // The watchdog below keeps time; hyper's own header timer would also count idle time.
    builder.header_read_timeout(None);
    let conn = watcher.watch(builder.serve_connection(io, service));
    tokio::select! {
        result = conn => {
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        }
        why = activity.watchdog(limits) => {
            tracing::debug!(%peer, why, "connection closed");
        }
    }
}

/// What the watchdog needs to know about a connection.
#[derive(Debug)]
struct ConnState {
    /// Requests whose response has not been produced yet.
    in_flight: usize,
    /// Since when nothing has been in flight (accept time at first).
    idle_since: Instant,
    /// No request has started on this connection yet.
    fresh: bool,
    /// When the first byte of the next request arrived, while idle.
    first_byte_at: Option<Instant>,
    /// Responses produced, not yet seen on the wire.
    unwritten_responses: usize,
}

#[derive(Debug)]
struct Activity {
    state: Mutex<ConnState>,
    changed: Notify,
}

impl Activity {
    fn new() -> Self {
        Self {
            state: Mutex::new(ConnState {
                in_flight: 0,
                idle_since: Instant::now(),
                fresh: true,
                first_byte_at: None,
                unwritten_responses: 0,
            }),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ConnState> {
        // Plain counters and instants: nothing a panicking holder could leave inconsistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// When the connection must close if nothing changes, and why; `None` while a request runs.
    fn deadline(&self, limits: Limits) -> Option<(Instant, &'static str)> {
        let s = self.lock();
        if s.in_flight > 0 {
            return None;
        }
        Some(match (s.fresh, s.first_byte_at) {
            (true, _) => (
                s.idle_since + limits.header_read_timeout,
                "header read timeout",
            ),
            (false, Some(t)) => (t + limits.header_read_timeout, "header read timeout"),
            (false, None) => (s.idle_since + limits.idle_timeout, "idle timeout"),
        })
    }

    /// Completes when the connection has overstayed (returning why).
    async fn watchdog(&self, limits: Limits) -> &'static str {
        loop {
            match self.deadline(limits) {
                None => self.changed.notified().await,
                Some((at, why)) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(at) => {
                            if self.deadline(limits).is_some_and(|(now_at, _)| now_at <= Instant::now()) {
                                return why;
                            }
                        }
                        () = self.changed.notified() => {}
                    }
                }
            }
        }
    }

    fn read_bytes(&self) {
        let mut s = self.lock();
        if s.in_flight == 0 && s.first_byte_at.is_none() {
            s.first_byte_at = Some(Instant::now());
            drop(s);
            self.changed.notify_one();
        }
    }
}

/// Marks a request in flight for as long as it lives.
struct RequestGuard(Arc<Activity>);

impl RequestGuard {
    fn begin(activity: Arc<Activity>) -> Self {
        {
            let mut s = activity.lock();
            s.in_flight += 1;
            s.fresh = false;
            s.first_byte_at = None;
        }
        activity.changed.notify_one();
        Self(activity)
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        {
            let mut s = self.0.lock();
            s.in_flight = s.in_flight.saturating_sub(1);
            s.unwritten_responses += 1;
            s.idle_since = Instant::now();
        }
        self.0.changed.notify_one();
    }
}

/// The connection's byte stream as hyper sees it: reads mark request starts for the watchdog,
/// and hyper's automatic (empty) answer to an unparseable request is replaced with a JSON one.
struct Watched<IO> {
    io: IO,
    activity: Arc<Activity>,
    /// A replacement answer still to be written, and how much of it is.
    replacement: Option<(Vec<u8>, usize)>,
}

impl<IO> Watched<IO> {
    fn new(io: IO, activity: Arc<Activity>) -> Self {
        Self {
            io,
            activity,
            replacement: None,
        }
    }
}

impl<IO: AsyncWrite + Unpin> Watched<IO> {
    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, written)) = &mut self.replacement {
            if *written == bytes.len() {
                self.replacement = None;
                break;
            }
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &bytes[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = ready!(Pin::new(&mut self.io).poll_read(cx, buf));
        if result.is_ok() && buf.filled().len() > before {
            self.activity.read_bytes();
        }
        Poll::Ready(result)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Watched<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_replacement(cx))?;
        let automatic = {
            let mut s = self.activity.lock();
            // Bytes with no request in flight and no response produced: hyper's own answer.
            let unsolicited = s.in_flight == 0 && s.unwritten_responses == 0;
            s.unwritten_responses = 0;
            unsolicited
        };
        if automatic {
            if let Some(replacement) = json_error_for(buf) {
                self.replacement = Some((replacement, 0));
                ready!(self.poll_replacement(cx))?;
                return Poll::Ready(Ok(buf.len()));
            }
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_replacement(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_replacement(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The JSON answer replacing hyper's empty automatic one (`head`, as hyper wrote it), or `None`
/// if `head` is not such an answer. The body carries both payvault error shapes, since the path
/// (and so which one the client reads) is unknown: `{"error": {"code", "message"}}` of the
/// merchant API and Twilio's `error_code` / `error_message`.
fn json_error_for(head: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(head).ok()?;
    let (status, code, message) = if text.starts_with("HTTP/1.1 400 ") {
        (
            "400 Bad Request",
            "malformed_request",
            "the request is not valid HTTP/1.1: a header name or value holds a forbidden byte (such as a control character), or the request line is malformed",
        )
    } else if text.starts_with("HTTP/1.1 431 ") {
        (
            "431 Request Header Fields Too Large",
            "request_headers_too_large",
            "the request's headers are too large",
        )
    } else if text.starts_with("HTTP/1.1 414 ") {
        (
            "414 URI Too Long",
            "uri_too_long",
            "the request URI is too long",
        )
    } else {
        return None;
    };
    let lower = text.to_ascii_lowercase();
    if lower.contains("\r\ncontent-type:") || !lower.contains("\r\ncontent-length: 0\r\n") {
        return None;
    }
    let body = serde_json::json!({
        "error": {"code": code, "message": message},
        "error_code": code,
        "error_message": message,
    })
    .to_string();
    Some(
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hypers_empty_automatic_answers_are_replaced() {
        let automatic = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let replaced = String::from_utf8(json_error_for(automatic).unwrap()).unwrap();
        assert!(replaced.starts_with("HTTP/1.1 400 Bad Request\r\ncontent-type: application/json"));
        let body: serde_json::Value =
            serde_json::from_str(replaced.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(body["error"]["code"], "malformed_request");
        assert_eq!(body["error_code"], "malformed_request");
        let ours = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
        assert!(json_error_for(ours).is_none());
        assert!(json_error_for(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_none());
        assert!(json_error_for(b"HTTP/1.1 431 x\r\ncontent-length: 0\r\n\r\n").is_some());
    }
}
