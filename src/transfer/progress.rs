//! The import's progress bar (bytes of the input file read, with rate and ETA, and rows by
//! outcome), drawn on stderr when it is a terminal.

use std::io::{Read, Seek, SeekFrom};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::import::ImportSummary;

/// A reader that counts the bytes read from it (its position, after a seek).
#[derive(Debug)]
pub struct CountingReader<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R> CountingReader<R> {
    pub fn new(inner: R, count: Arc<AtomicU64>) -> Self {
        Self { inner, count }
    }
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

impl<R: Seek> Seek for CountingReader<R> {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        let at = self.inner.seek(pos)?;
        self.count.store(at, Ordering::Relaxed);
        Ok(at)
    }
}

/// The bar, or nothing when stderr is not a terminal or progress was not asked for.
#[derive(Debug, Clone)]
pub struct Progress {
    bar: Option<ProgressBar>,
    count: Arc<AtomicU64>,
}

impl Progress {
    pub fn new(total_bytes: u64, enabled: bool) -> Self {
        let count = Arc::new(AtomicU64::new(0));
        let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let bar = (enabled && terminal).then(|| {
            let bar =
                ProgressBar::with_draw_target(Some(total_bytes), ProgressDrawTarget::stderr());
            if let Ok(style) = ProgressStyle::with_template(
                "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
            ) {
                bar.set_style(style.progress_chars("#>-"));
            }
            bar.set_prefix("importing");
            bar
        });
        Self { bar, count }
    }

    /// The byte counter to give the input's [`CountingReader`].
    pub fn counter(&self) -> Arc<AtomicU64> {
        self.count.clone()
    }

    pub fn stage(&self, name: &'static str) {
        if let Some(bar) = &self.bar {
            bar.set_prefix(name);
        }
    }

    pub fn rows(&self, s: &ImportSummary) {
        if let Some(bar) = &self.bar {
            bar.set_position(self.count.load(Ordering::Relaxed));
            bar.set_message(format!(
                "{} imported, {} already, {} deduplicated, {} refused",
                s.imported, s.already_imported, s.deduplicated, s.refused
            ));
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.set_position(self.count.load(Ordering::Relaxed));
            bar.finish();
        }
    }
}
