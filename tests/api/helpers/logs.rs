//! Log capture: everything payvault logs in this test process, for leak scans.

use std::io::Write;
use std::sync::{Mutex, OnceLock};

/// Everything every test binary logs, for leak scans.
pub fn captured_logs() -> String {
    String::from_utf8_lossy(&LOGS.get_or_init(Default::default).lock().unwrap()).into_owned()
}

static LOGS: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();

struct Capture;

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.get_or_init(Default::default)
            .lock()
            .unwrap()
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub(super) fn init_logging() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        // Everything payvault logs, at the most verbose level, so a leak at any level is caught.
        let _ = tracing_subscriber::fmt()
            .with_env_filter("trace,hyper=debug,hyper_util=debug,h2=info,tokio=info,runtime=info")
            .with_writer(|| Capture)
            .with_ansi(false)
            .try_init();
    });
}
