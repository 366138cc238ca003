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
