//! Test harness: every test gets its own freshly migrated database and its own payvault server
//! on a loopback port, and talks to it over HTTP like Twilio does.
//!
//! `db` (the PostgreSQL server, started for the test process when there is none, and a database
//! per test), `app` (the server under test), `requests` (Twilio request bodies), `stub` (a
//! scripted payment processor), `logs` (log capture) and `leaks` (scans for card data).

mod app;
mod custody;
mod db;
mod leaks;
mod logs;
mod requests;
mod stub;

pub use app::*;
pub use custody::*;
pub use db::*;
pub use leaks::*;
pub use logs::*;
pub use requests::*;
pub use stub::*;

/// Runs futures concurrently on the current task.
pub async fn join_all<F: std::future::Future>(futs: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut set: Vec<_> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in set.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(|o| o.unwrap()).collect()
}
