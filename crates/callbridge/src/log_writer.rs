//! Where log lines go: a shared buffer that one background thread writes to stderr every
//! [`FLUSH_INTERVAL`].
//!
//! Why not `tracing_appender::non_blocking`: it sends each line through a channel and wakes its
//! writer thread for it. At 30k makecalls/s, one info line each, those wake-ups cost the API
//! about a fifth of its throughput on two cores (BENCHMARKS.md, API). Here a line costs a
//! mutex-protected copy into the buffer; the writer wakes on a timer, or early when the buffer
//! passes [`FLUSH_BYTES`], and writes everything queued in one `write`.
//!
//! The buffer is bounded: when stderr cannot keep up and [`MAX_BUFFERED_BYTES`] are waiting,
//! further lines are dropped (and counted, and the count is reported in the log) rather than
//! slowing calls down or growing memory.
//!
//! Lines still waiting are written when the [`FlushGuard`] drops (normal exit, SIGTERM) and by
//! [`BufferedLog::flush_now`], which the binary's panic hook calls; a process killed outright
//! (SIGKILL, OOM killer) loses at most the last [`FLUSH_INTERVAL`] of lines.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

/// How long a line may wait before it is written.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(20);
/// A buffer this full is written without waiting for the interval.
pub const FLUSH_BYTES: usize = 256 * 1024;
/// Lines arriving while this much is waiting are dropped.
pub const MAX_BUFFERED_BYTES: usize = 16 * 1024 * 1024;

#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    closing: bool,
}

struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
    dropped: AtomicU64,
}

/// The `MakeWriter` handed to tracing-subscriber; cheap to clone.
#[derive(Clone)]
pub struct BufferedLog {
    shared: Arc<Shared>,
}

/// Stops the writer thread when dropped, after it has written every line still queued.
pub struct FlushGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Starts the writer thread over `out` (stderr in the binary).
pub fn spawn(out: impl Write + Send + 'static) -> (BufferedLog, FlushGuard) {
    let shared = Arc::new(Shared {
        pending: Mutex::new(Pending::default()),
        wake: Condvar::new(),
        dropped: AtomicU64::new(0),
    });
    let writer = shared.clone();
    let thread = std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || write_loop(&writer, out))
        .ok();
    (
        BufferedLog {
            shared: shared.clone(),
        },
        FlushGuard { shared, thread },
    )
}

fn write_loop(shared: &Shared, mut out: impl Write) {
    let mut batch = Vec::new();
    loop {
        let closing = {
            let mut pending = shared.pending.lock();
            if !pending.closing && pending.bytes.len() < FLUSH_BYTES {
                shared.wake.wait_for(&mut pending, FLUSH_INTERVAL);
            }
            std::mem::swap(&mut pending.bytes, &mut batch);
            pending.closing
        };
        let dropped = shared.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            batch.extend_from_slice(
                format!("callbridge: {dropped} log lines dropped (stderr too slow)\n").as_bytes(),
            );
        }
        if !batch.is_empty() {
            // Nowhere to report a failing stderr; the lines are lost either way.
            let _ = out.write_all(&batch);
            let _ = out.flush();
            batch.clear();
        }
        if closing {
            return;
        }
    }
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        self.shared.pending.lock().closing = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One event being formatted: tracing-subscriber writes it in pieces, and it joins the shared
/// buffer whole when dropped, so lines from different threads never interleave.
pub struct EventWriter {
    shared: Arc<Shared>,
    line: Vec<u8>,
}

impl Write for EventWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.line.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        if self.line.is_empty() {
            return;
        }
        let mut pending = self.shared.pending.lock();
        if pending.bytes.len() + self.line.len() > MAX_BUFFERED_BYTES {
            drop(pending);
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        pending.bytes.extend_from_slice(&self.line);
        let full = pending.bytes.len() >= FLUSH_BYTES;
        drop(pending);
        if full {
            self.shared.wake.notify_one();
        }
    }
}

impl BufferedLog {
    /// Writes the lines waiting in the buffer to stderr from the calling thread, now (for a
    /// panic hook: the lines just before a panic are the ones worth having).
    pub fn flush_now(&self) {
        let waiting = std::mem::take(&mut self.shared.pending.lock().bytes);
        if !waiting.is_empty() {
            let mut stderr = std::io::stderr().lock();
            let _ = stderr.write_all(&waiting);
            let _ = stderr.flush();
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for BufferedLog {
    type Writer = EventWriter;

    fn make_writer(&'a self) -> EventWriter {
        EventWriter {
            shared: self.shared.clone(),
            line: Vec::with_capacity(256),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `Write` the test can read back.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn line(log: &BufferedLog, text: &str) {
        use tracing_subscriber::fmt::MakeWriter;
        let mut writer = log.make_writer();
        // In two pieces, as the formatter writes: they must arrive together.
        writer.write_all(text.as_bytes()).unwrap();
        writer.write_all(b"\n").unwrap();
    }

    #[test]
    fn every_line_is_written_whole_and_in_order_by_the_time_the_guard_drops() {
        let sink = Sink::default();
        let (log, guard) = spawn(sink.clone());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        line(&log, &format!("thread {t} line {i}"));
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        drop(guard);
        let text = String::from_utf8(sink.0.lock().clone()).unwrap();
        assert_eq!(text.lines().count(), 4000);
        for t in 0..4 {
            let own: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with(&format!("thread {t} ")))
                .collect();
            let expected: Vec<String> = (0..1000).map(|i| format!("thread {t} line {i}")).collect();
            assert_eq!(own, expected);
        }
    }

    #[test]
    fn flush_now_empties_the_buffer_from_the_calling_thread() {
        // No writer thread: only flush_now can take the line.
        let log = BufferedLog {
            shared: Arc::new(Shared {
                pending: Mutex::new(Pending::default()),
                wake: Condvar::new(),
                dropped: AtomicU64::new(0),
            }),
        };
        line(
            &log,
            "log_writer test: a line written by flush_now (expected output)",
        );
        assert!(!log.shared.pending.lock().bytes.is_empty());
        log.flush_now();
        assert!(log.shared.pending.lock().bytes.is_empty());
    }

    #[test]
    fn a_full_buffer_drops_lines_and_says_so() {
        /// Blocks in its first write until released, telling the test when it got there.
        struct Stuck {
            entered: std::sync::mpsc::Sender<()>,
            release: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
        }
        impl Write for Stuck {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                let _ = self.entered.send(());
                let (released, cv) = &*self.release;
                let mut released = released.lock().unwrap();
                while !*released {
                    released = cv.wait(released).unwrap();
                }
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let (entered, writer_blocked) = std::sync::mpsc::channel();
        let release = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
        let (log, guard) = spawn(Stuck {
            entered,
            release: release.clone(),
        });
        line(&log, "first");
        // The writer holds "first" and is blocked: nothing more leaves the buffer.
        writer_blocked.recv().unwrap();
        let big = "x".repeat(1024 * 1024);
        for _ in 0..20 {
            line(&log, &big);
        }
        let dropped = log.shared.dropped.load(Ordering::Relaxed);
        let waiting = log.shared.pending.lock().bytes.len();
        // Released before asserting, so that a failed assertion cannot leave the guard's drop
        // waiting for a blocked writer.
        *release.0.lock().unwrap() = true;
        release.1.notify_all();
        drop(guard);
        // 15 lines of 1 MiB + 1 fit under 16 MiB; the other 5 are dropped.
        assert_eq!(dropped, 5);
        assert!(waiting <= MAX_BUFFERED_BYTES);
    }
}
