//! Log lines captured per test thread, for tests that assert what is logged and at which
//! level. A `#[tokio::test]` runs on one thread, so what the service logs from its tasks
//! is captured for that test alone.

/// Log lines written on one test's thread.
#[derive(Clone, Default)]
pub struct CapturedLogs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

thread_local! {
    static CAPTURE: std::cell::RefCell<Option<CapturedLogs>> = const { std::cell::RefCell::new(None) };
}

/// Writes to the capture of the current thread, if any; drops the rest.
struct ThreadCaptureWriter;

impl std::io::Write for ThreadCaptureWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        CAPTURE.with(|capture| {
            if let Some(captured) = &*capture.borrow() {
                captured.0.lock().unwrap().extend_from_slice(bytes);
            }
        });
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl CapturedLogs {
    /// Captures what is logged (INFO and above) on this thread from now on. One global
    /// subscriber routes by thread: a scoped subscriber (`set_default`) would race with the
    /// other tests over tracing's global callsite cache.
    pub fn start_on_this_thread() -> Self {
        static INSTALL: std::sync::Once = std::sync::Once::new();
        INSTALL.call_once(|| {
            let _ = tracing_subscriber::fmt()
                .with_ansi(false)
                .with_max_level(tracing::Level::INFO)
                .with_writer(|| ThreadCaptureWriter)
                .try_init();
        });
        let captured = Self::default();
        CAPTURE.with(|capture| *capture.borrow_mut() = Some(captured.clone()));
        captured
    }

    /// The captured lines that contain every one of `needles`.
    pub fn lines_with(&self, needles: &[&str]) -> Vec<String> {
        let text = String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned();
        text.lines()
            .filter(|line| needles.iter().all(|needle| line.contains(needle)))
            .map(str::to_string)
            .collect()
    }

    /// How many captured lines contain `needle`.
    pub fn lines_containing(&self, needle: &str) -> usize {
        self.lines_with(&[needle]).len()
    }
}
