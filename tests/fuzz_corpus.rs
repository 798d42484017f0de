//! Replays the fuzz corpora (`fuzz/corpus/<target>/`, and any crash reproducer kept in
//! `fuzz/artifacts/<target>/`) through the same `o365_connector::fuzzing` functions the
//! cargo-fuzz targets call, so every input the fuzzer found interesting stays a regression
//! test without cargo-fuzz or a nightly toolchain.
//!
//! A counting global allocator measures each input's peak live allocation above what was
//! live before it, and the test fails, naming the file, when an input panics or when that
//! peak exceeds [`allocation_bound`]. The tests share the counters, so they take a lock and
//! run one at a time.

use std::alloc::{GlobalAlloc, Layout, System};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use o365_connector::fuzzing;

/// Wraps the system allocator, counting the bytes live now and their peak since the last
/// [`reset_peak`].
struct CountingAllocator;

static CURRENT_BYTES: AtomicUsize = AtomicUsize::new(0);
static PEAK_BYTES: AtomicUsize = AtomicUsize::new(0);

impl CountingAllocator {
    fn added(size: usize) {
        let now = CURRENT_BYTES.fetch_add(size, Ordering::Relaxed) + size;
        PEAK_BYTES.fetch_max(now, Ordering::Relaxed);
    }

    fn removed(size: usize) {
        CURRENT_BYTES.fetch_sub(size, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded to `System` unchanged; the counters do not allocate.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `alloc`'s contract, passed on as is.
        let pointer = unsafe { System.alloc(layout) };
        if !pointer.is_null() {
            Self::added(layout.size());
        }
        pointer
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let pointer = unsafe { System.alloc_zeroed(layout) };
        if !pointer.is_null() {
            Self::added(layout.size());
        }
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        // SAFETY: `pointer` was allocated by `System` with `layout`, as the caller promises.
        unsafe { System.dealloc(pointer, layout) };
        Self::removed(layout.size());
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `dealloc`, and `new_size` is valid per the caller.
        let moved = unsafe { System.realloc(pointer, layout, new_size) };
        if !moved.is_null() {
            // Counted as the new block before the old one goes: a moving realloc holds both.
            Self::added(new_size);
            Self::removed(layout.size());
        }
        moved
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// The tests share the counters: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Makes the peak the bytes live now; returns them.
fn reset_peak() -> usize {
    let now = CURRENT_BYTES.load(Ordering::Relaxed);
    PEAK_BYTES.store(now, Ordering::Relaxed);
    now
}

/// The most bytes one input may hold live at once: 2 MiB + 1024 × its length.
///
/// Measured (`fuzz/README.md`): fixed costs (a parsed `Config`, the webhook target's tenant)
/// stay under 0.2 MiB; the parsers that build a tree cost at most about 150 bytes per input
/// byte (a YAML or TOML document of one-character flow collections, with its events), and
/// what `utmstack::files::parse_yaml` still lets aliases expand to reaches about 475 (a
/// 64 KiB list of aliases as groups). 1024 leaves twice that. What it catches is growth
/// out of proportion with the input: an allocation sized from a number in the input, or
/// alias expansion without limit (6 KiB of nested aliases held 370 MB, 56,000 × its size,
/// before `parse_yaml`; `fuzz/artifacts/utmstack_yaml/` keeps that input), which libFuzzer
/// without a sanitizer would only notice past its 2 GiB malloc limit.
fn allocation_bound(input_length: usize) -> usize {
    2 * 1024 * 1024 + 1024 * input_length
}

/// The files of `directory`, sorted; none when it does not exist.
fn files_in(directory: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(directory) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.expect("readable directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

/// What one replay found: the largest peak, and every input that failed.
struct Replay {
    inputs: usize,
    largest_peak: (usize, String),
    failures: Vec<String>,
}

/// Runs every corpus file (and kept artifact) of `target` through `run`.
fn replay(target: &str, run: fn(&[u8])) -> Replay {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let fuzz_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let corpus = files_in(&fuzz_dir.join("corpus").join(target));
    assert!(
        !corpus.is_empty(),
        "fuzz/corpus/{target}/ is missing or empty: the corpus must be kept in the repository"
    );
    let artifacts = files_in(&fuzz_dir.join("artifacts").join(target));
    let mut replay = Replay {
        inputs: 0,
        largest_peak: (0, String::new()),
        failures: Vec::new(),
    };
    for file in corpus.iter().chain(&artifacts) {
        let name = file
            .strip_prefix(&fuzz_dir)
            .unwrap_or(file)
            .display()
            .to_string();
        let input = std::fs::read(file).unwrap_or_else(|error| panic!("{name}: {error}"));
        let baseline = reset_peak();
        let outcome = catch_unwind(AssertUnwindSafe(|| run(&input)));
        let peak = PEAK_BYTES.load(Ordering::Relaxed).saturating_sub(baseline);
        replay.inputs += 1;
        if outcome.is_err() {
            replay.failures.push(format!("{name}: panicked"));
        }
        let bound = allocation_bound(input.len());
        if peak > bound {
            replay.failures.push(format!(
                "{name}: peak live allocation {peak} bytes is over the bound of {bound} bytes \
                 for {} input bytes",
                input.len()
            ));
        }
        if peak > replay.largest_peak.0 {
            replay.largest_peak = (peak, name);
        }
    }
    println!(
        "{target}: {} inputs, largest peak {} bytes ({})",
        replay.inputs, replay.largest_peak.0, replay.largest_peak.1
    );
    replay
}

/// The stack each replay runs on: the main thread's (8 MiB), where the service parses its
/// configuration at start and libFuzzer runs the targets. A test thread's default 2 MiB is
/// too small for debug-build frames at the TOML parser's maximum nesting (80 levels), which
/// release code parses in under 2 MiB.
const REPLAY_STACK_BYTES: usize = 8 * 1024 * 1024;

fn assert_replays_cleanly(target: &'static str, run: fn(&[u8])) {
    let replay = std::thread::Builder::new()
        .name(format!("replay {target}"))
        .stack_size(REPLAY_STACK_BYTES)
        .spawn(move || replay(target, run))
        .expect("replay thread starts")
        .join()
        .expect("replay does not panic outside an input");
    assert!(
        replay.failures.is_empty(),
        "{} of {} {target} inputs failed:\n{}",
        replay.failures.len(),
        replay.inputs,
        replay.failures.join("\n")
    );
}

#[test]
fn webhook_body_corpus_replays_without_panic_within_the_allocation_bound() {
    assert_replays_cleanly("webhook_body", fuzzing::webhook_body);
}

#[test]
fn splitter_corpus_replays_without_panic_within_the_allocation_bound() {
    assert_replays_cleanly("splitter", fuzzing::splitter);
}

#[test]
fn config_toml_corpus_replays_without_panic_within_the_allocation_bound() {
    assert_replays_cleanly("config_toml", fuzzing::config_toml);
}

#[test]
fn utmstack_yaml_corpus_replays_without_panic_within_the_allocation_bound() {
    assert_replays_cleanly("utmstack_yaml", fuzzing::utmstack_yaml);
}

/// The bound means nothing if the allocator does not count: an input that makes a target
/// allocate out of proportion must fail. A run that holds 32 MiB stands in for one.
#[test]
fn counting_allocator_catches_a_peak_over_the_bound() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let baseline = reset_peak();
    let held = vec![1u8; 32 * 1024 * 1024];
    std::hint::black_box(&held);
    drop(held);
    let peak = PEAK_BYTES.load(Ordering::Relaxed).saturating_sub(baseline);
    // Other test threads allocate and free meanwhile, so the count may be a little off the
    // 32 MiB either way; what matters is that it is far past the bound.
    assert!(peak >= 31 * 1024 * 1024, "peak {peak}");
    assert!(peak > allocation_bound(1024), "peak {peak}");
    assert!(
        CURRENT_BYTES.load(Ordering::Relaxed) < baseline + 1024 * 1024,
        "freed bytes are no longer counted"
    );
}
