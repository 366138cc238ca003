//! A scripted payment processor on a loopback port.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

/// A scripted answer of the [`Stub`] processor.
#[derive(Clone, Debug)]
pub enum StubAnswer {
    Json {
        status: u16,
        body: Value,
        delay: Duration,
    },
    Raw {
        status: u16,
        body: String,
    },
    /// HTTP 200: an approval followed by spaces, streamed up to `total` bytes ([`Flood`]).
    Flood {
        total: usize,
        flood: Arc<Flood>,
    },
}

impl StubAnswer {
    pub fn approve(id: &str) -> Self {
        Self::Json {
            status: 200,
            body: serde_json::json!({"charge_id": id, "error_code": null, "error_message": null}),
            delay: Duration::ZERO,
        }
    }
    pub fn slow(id: &str, delay: Duration) -> Self {
        let Self::Json { status, body, .. } = Self::approve(id) else {
            unreachable!()
        };
        Self::Json {
            status,
            body,
            delay,
        }
    }
}

/// A request as the processor saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

type Script = Arc<dyn Fn(usize, &Value) -> StubAnswer + Send + Sync>;

/// A payment processor stub on a loopback port: records every call and answers by script
/// (the script gets the call number, from 1, and the request body).
pub struct Stub {
    pub url: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl Stub {
    pub async fn start(
        script: impl Fn(usize, &Value) -> StubAnswer + Send + Sync + 'static,
    ) -> Self {
        use axum::extract::State;
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let script: Script = Arc::new(script);
        let state = (seen.clone(), script);
        let app = axum::Router::new()
            .route(
                "/charge",
                axum::routing::post(
                    |State((seen, script)): State<(Arc<Mutex<Vec<Seen>>>, Script)>,
                     headers: axum::http::HeaderMap,
                     body: axum::body::Bytes| async move {
                        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                        let n = {
                            let mut seen = seen.lock().unwrap();
                            seen.push(Seen {
                                headers: headers
                                    .iter()
                                    .map(|(k, v)| {
                                        (k.to_string(), v.to_str().unwrap_or("").to_owned())
                                    })
                                    .collect(),
                                body: body.clone(),
                            });
                            seen.len()
                        };
                        let answer = script(n, &body);
                        use axum::response::IntoResponse;
                        match answer {
                            StubAnswer::Json {
                                status,
                                body,
                                delay,
                            } => {
                                tokio::time::sleep(delay).await;
                                (
                                    axum::http::StatusCode::from_u16(status).unwrap(),
                                    axum::Json(body),
                                )
                                    .into_response()
                            }
                            StubAnswer::Flood { total, flood } => {
                                let approval = serde_json::json!({"charge_id": "ch_flood", "error_code": null, "error_message": null});
                                let mut response = flood
                                    .body(approval.to_string().into_bytes(), b' ', total)
                                    .into_response();
                                response.headers_mut().insert(
                                    axum::http::header::CONTENT_TYPE,
                                    axum::http::HeaderValue::from_static("application/json"),
                                );
                                response
                            }
                            StubAnswer::Raw { status, body } => {
                                (axum::http::StatusCode::from_u16(status).unwrap(), body)
                                    .into_response()
                            }
                        }
                    },
                ),
            )
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/charge", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, seen }
    }

    pub fn calls(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// A processor answer that floods: `prefix` (a real answer) then `filler` bytes, streamed in
/// 64 KiB chunks up to `total` bytes, with no Content-Length. It counts what the reader took and
/// notes when the reader hung up (the server stops pulling the stream and drops it).
#[derive(Debug, Default)]
pub struct Flood {
    /// Bytes handed to the HTTP server so far (it pulls as the socket drains).
    pub sent: std::sync::atomic::AtomicUsize,
    /// The stream was dropped before its end: the reader hung up.
    pub cut: std::sync::atomic::AtomicBool,
    /// Every byte was handed over.
    pub complete: std::sync::atomic::AtomicBool,
}

/// Sets [`Flood::cut`] when the stream is dropped before its end.
struct FloodGuard(Arc<Flood>);

impl Drop for FloodGuard {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering;
        if !self.0.complete.load(Ordering::SeqCst) {
            self.0.cut.store(true, Ordering::SeqCst);
        }
    }
}

impl Flood {
    pub const CHUNK: usize = 64 * 1024;

    pub fn body(self: &Arc<Self>, prefix: Vec<u8>, filler: u8, total: usize) -> axum::body::Body {
        use std::sync::atomic::Ordering;
        let fill = bytes::Bytes::from(vec![filler; Self::CHUNK]);
        let state = (FloodGuard(self.clone()), Some(prefix), 0usize);
        let stream = futures_util::stream::unfold(state, move |(guard, prefix, offset)| {
            let fill = fill.clone();
            async move {
                let chunk = match prefix {
                    Some(p) => bytes::Bytes::from(p),
                    None if offset >= total => {
                        guard.0.complete.store(true, Ordering::SeqCst);
                        return None;
                    }
                    None => fill.slice(..Self::CHUNK.min(total - offset)),
                };
                guard.0.sent.fetch_add(chunk.len(), Ordering::SeqCst);
                let next = offset + chunk.len();
                Some((Ok::<_, std::io::Error>(chunk), (guard, None, next)))
            }
        });
        axum::body::Body::from_stream(stream)
    }

    /// Waits (polling, up to `within`) until the reader hung up; the bytes it was handed.
    pub async fn wait_cut(&self, within: Duration) -> usize {
        use std::sync::atomic::Ordering;
        let deadline = std::time::Instant::now() + within;
        while !self.cut.load(Ordering::SeqCst) {
            assert!(
                !self.complete.load(Ordering::SeqCst),
                "the whole flood was read ({} bytes)",
                self.sent.load(Ordering::SeqCst)
            );
            assert!(
                std::time::Instant::now() < deadline,
                "the reader is still reading after {within:?}: {} bytes so far",
                self.sent.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.sent.load(Ordering::SeqCst)
    }
}
