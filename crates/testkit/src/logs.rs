//! Log capture: everything `tracing` writes at TRACE level, kept as text, so a test can
//! assert that no secret or token ever reaches a log line.
//!
//! ```
//! let (logs, _guard) = truelayer_auth_testkit::logs::LogCapture::trace();
//! tracing::trace!("token request failed");
//! assert!(logs.text().contains("token request failed"));
//! ```

use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};

use tracing::subscriber::DefaultGuard;
use tracing_subscriber::fmt::MakeWriter;

/// A log writer that keeps what it is given; clones share the same text.
#[derive(Clone, Debug, Default)]
pub struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl LogCapture {
    /// Captures every `tracing` event of this thread, TRACE level and up, formatted as the
    /// default `fmt` subscriber does but without colour codes, until the guard is dropped.
    ///
    /// The subscriber is the thread's default: with tokio, use a current-thread runtime
    /// (`#[tokio::test]`'s default) so that every task logs on this thread.
    #[must_use = "the capture ends when the guard is dropped"]
    pub fn trace() -> (LogCapture, DefaultGuard) {
        let capture = LogCapture::default();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(capture.clone())
            .with_ansi(false)
            .finish();
        let guard = tracing::subscriber::set_default(subscriber);
        (capture, guard)
    }

    /// Everything written so far.
    pub fn text(&self) -> String {
        let bytes = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        String::from_utf8(bytes.clone()).expect("tracing writes UTF-8")
    }
}

impl Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogCapture {
    type Writer = LogCapture;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Asserts that no marker secret is in `text`, as written or percent-decoded (a leak may be
/// escaped); `what` names the text in the failure.
///
/// # Panics
///
/// When a marker is found: that is the test failing.
pub fn assert_no_markers(markers: &[&str], what: &str, text: &str) {
    let decoded = percent_encoding::percent_decode_str(text).decode_utf8_lossy();
    for text in [text, &decoded] {
        for marker in markers {
            assert!(!text.contains(marker), "{what} leaks {marker}: {text}");
        }
    }
}

/// An error's `Display` and `Debug`, and those of every error in its `source()` chain: all
/// the text an error can put in front of a user or into a log line.
pub fn every_form_of(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = format!("{error} {error:?}");
    let mut source = error.source();
    while let Some(s) = source {
        out.push_str(&format!(" {s} {s:?}"));
        source = s.source();
    }
    out
}
