//! Memory as measured, not estimated: heap bytes through a counting global allocator (current
//! and peak since the last reset), the process's resident set from the OS, and the limits the
//! process's memory is under ([`memory_limit`]).
//!
//! The allocator also turns running out of memory into an error line and exit status 1 rather
//! than Rust's abort (a core dump's status 134): an allocation fails only when a limit is lower
//! than the run's estimate foresaw. Code that can handle a failed allocation itself asks for it
//! inside [`fallibly`] (where `try_reserve` gets its error back).
//!
//! Only binaries install the allocator (the `brainfloat` binary, the benchmark's tests); the
//! trainer takes what a step measured as a [`MemoryReading`] value, made by [`step_reading`]. A
//! binary opts in with one line; until then [`heap`] returns `None`:
//!
//! ```ignore
//! #[global_allocator]
//! static HEAP: brainfloat_memory::CountingAllocator = brainfloat_memory::CountingAllocator;
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

mod limit;

pub use limit::{
    CgroupVersion, LimitSource, MemoryLimit, bytes_text, memory_limit, memory_limits,
    own_memory_cgroups,
};

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static INSTALLED: AtomicBool = AtomicBool::new(false);

std::thread_local! {
    /// Whether this thread is inside [`fallibly`]. A `const` thread-local without a destructor
    /// is a plain TLS slot: reading it allocates nothing.
    static FALLIBLE: Cell<bool> = const { Cell::new(false) };
}

/// The system allocator, counting the bytes it hands out; when memory runs out it ends the
/// process with an error line (outside [`fallibly`]).
pub struct CountingAllocator;

impl CountingAllocator {
    fn grew(size: usize) {
        let now = CURRENT.fetch_add(size, Ordering::Relaxed) + size;
        PEAK.fetch_max(now, Ordering::Relaxed);
        if !INSTALLED.load(Ordering::Relaxed) {
            INSTALLED.store(true, Ordering::Relaxed);
        }
    }

    /// What a null pointer from `System` comes to: the pointer, inside [`fallibly`]; else an
    /// error line and exit status 1.
    fn failed(size: usize) -> *mut u8 {
        if !FALLIBLE.with(Cell::get) {
            out_of_memory(size);
        }
        std::ptr::null_mut()
    }
}

/// Runs `work` with failed allocations handed back to their callers (`try_reserve`'s error)
/// rather than ending the process: for buffers sized by input that no check bounded before.
pub fn fallibly<T>(work: impl FnOnce() -> T) -> T {
    /// Puts the outer setting back, also when `work` unwinds.
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            FALLIBLE.with(|fallible| fallible.set(self.0));
        }
    }
    let _restore = Restore(FALLIBLE.with(|fallible| fallible.replace(true)));
    work()
}

/// An empty buffer with room for `len` bytes, or `None` when memory cannot hold it: for a
/// buffer sized by a file, so that a file too large is an error that names it.
pub fn try_buffer(len: usize) -> Option<Vec<u8>> {
    let mut buffer = Vec::new();
    fallibly(|| buffer.try_reserve_exact(len)).ok()?;
    Some(buffer)
}

/// Writes why the process ends and ends it with status 1, allocating nothing: the heap is
/// full, and `exit`'s handlers (libtorch's destructors among them) could allocate.
fn out_of_memory(size: usize) -> ! {
    let mut line = [0u8; 400];
    let mut len = 0;
    let mut push = |bytes: &[u8]| {
        let end = (len + bytes.len()).min(line.len());
        line[len..end].copy_from_slice(&bytes[..end - len]);
        len = end;
    };
    let mut digits = [0u8; 20];
    let mut number = |mut value: usize, push: &mut dyn FnMut(&[u8])| {
        let mut at = digits.len();
        loop {
            at -= 1;
            digits[at] = b'0' + (value % 10) as u8;
            value /= 10;
            if value == 0 {
                break;
            }
        }
        push(&digits[at..]);
    };
    push(b"error: out of memory: an allocation of ");
    number(size, &mut push);
    push(b" bytes failed with ");
    number(CURRENT.load(Ordering::Relaxed), &mut push);
    push(
        b" bytes of heap in use; a limit on this process's memory (`ulimit -v`, a cgroup) \
          is lower than the run needs\n",
    );
    // SAFETY: `write` reads `len` initialised bytes of `line`; `_exit` ends the process at once.
    unsafe {
        libc::write(2, line.as_ptr().cast(), len);
        libc::_exit(1)
    }
}

// SAFETY: every call is forwarded to `System` unchanged; the counters only observe sizes.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc` is passed on to `System`.
        let ptr = unsafe { System.alloc(layout) };
        if ptr.is_null() {
            return Self::failed(layout.size());
        }
        Self::grew(layout.size());
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if ptr.is_null() {
            return Self::failed(layout.size());
        }
        Self::grew(layout.size());
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, i.e. from `System`, with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `dealloc`, and `new_size` is the caller's valid size.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if new.is_null() {
            return Self::failed(new_size);
        }
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
        Self::grew(new_size);
        new
    }
}

/// The process's memory after a training step, as [`step_reading`] measures it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryReading {
    /// Most heap bytes in use during the step; `None` without [`CountingAllocator`].
    pub heap_peak_bytes: Option<u64>,
    /// Resident set size now.
    pub rss_bytes: Option<u64>,
}

/// The step's heap peak (then a new peak from the bytes in use now) and the resident set: what
/// the metrics plugin records after each step.
pub fn step_reading() -> MemoryReading {
    MemoryReading {
        heap_peak_bytes: take_heap_peak(),
        rss_bytes: rss().map(|rss| rss.current as u64),
    }
}

/// Heap bytes in use now and at the peak since the last [`reset_heap_peak`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeapStats {
    /// Bytes allocated and not yet freed.
    pub current: usize,
    /// Most bytes allocated at once since the last reset.
    pub peak: usize,
}

/// The heap counters, or `None` when the binary did not install [`CountingAllocator`].
pub fn heap() -> Option<HeapStats> {
    INSTALLED.load(Ordering::Relaxed).then(|| HeapStats {
        current: CURRENT.load(Ordering::Relaxed),
        peak: PEAK.load(Ordering::Relaxed),
    })
}

/// Starts a new peak from the bytes in use now.
pub fn reset_heap_peak() {
    PEAK.store(CURRENT.load(Ordering::Relaxed), Ordering::Relaxed);
}

/// The heap peak since the previous call (or reset), then a new peak from the bytes in use
/// now: what one training step allocated at most. `None` without [`CountingAllocator`].
pub fn take_heap_peak() -> Option<u64> {
    let peak = heap()?.peak as u64;
    reset_heap_peak();
    Some(peak)
}

/// The process's resident set, from `/proc/self/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RssStats {
    /// Resident bytes now (`VmRSS`).
    pub current: usize,
    /// Most resident bytes since the start or the last [`reset_rss_peak`] (`VmHWM`).
    pub peak: usize,
}

/// The resident set, or `None` where `/proc` does not tell (not Linux).
pub fn rss() -> Option<RssStats> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| limit::kib_field(&status, name).map(|bytes| bytes as usize);
    Some(RssStats {
        current: field("VmRSS:")?,
        peak: field("VmHWM:")?,
    })
}

/// Resets the resident-set peak to the current size (Linux ≥ 4.0); `false` if refused.
pub fn reset_rss_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The resident set around one piece of work ([`rss_during`]), in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RssSpan {
    /// Resident just before the work, with freed memory handed back.
    pub before: usize,
    /// The most resident during the work.
    pub peak: usize,
}

/// Runs `work` with the allocator's free memory handed back to the OS first and the
/// resident-set peak reset: its result, and the resident set just before it and at its highest
/// during it; `None` where the OS does not tell.
pub fn rss_during<T>(work: impl FnOnce() -> T) -> (T, Option<RssSpan>) {
    release_free_memory();
    let reset = reset_rss_peak();
    let before = rss();
    let result = work();
    let span = match (before, rss()) {
        (Some(before), Some(after)) if reset => Some(RssSpan {
            before: before.current,
            peak: after.peak,
        }),
        _ => None,
    };
    (result, span)
}

/// Returns memory the allocator holds but no longer uses to the OS, so that the resident set
/// of what runs next starts from what is live (glibc's `malloc_trim`; nothing elsewhere).
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        unsafe extern "C" {
            fn malloc_trim(pad: usize) -> i32;
        }
        // SAFETY: glibc's `malloc_trim` takes any pad and only releases free pages.
        unsafe {
            malloc_trim(0);
        }
    }
}

/// Whether [`retain_freed_memory`] last turned retention on.
static RETAINING: AtomicBool = AtomicBool::new(false);

/// With `retain`, makes the allocator keep freed memory for reuse rather than hand it back to
/// the OS at once (glibc: no `mmap` for large blocks, trim only past 2 GiB free at the top of
/// the heap); without, restores glibc's defaults. Returns whether the setting applied (glibc
/// only).
///
/// A step allocates and frees tensors of the logits' size (hundreds of MiB) many times. glibc
/// serves any block over 32 MiB with a fresh `mmap` and unmaps it on free, so each such tensor
/// costs the kernel a page fault and a page clear per 4 KiB: a libtorch step of the `small`
/// model took 1.7× as long. The price is a resident set that includes freed blocks (what
/// PyTorch's GPU caching allocator does too), so the benchmark measures memory without it;
/// [`release_free_memory`] returns freed blocks on demand.
pub fn retain_freed_memory(retain: bool) -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // glibc's <malloc.h> parameter numbers and default values.
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_MMAP_MAX: i32 = -4;
        const DEFAULT_TRIM_THRESHOLD: i32 = 128 * 1024;
        const DEFAULT_MMAP_MAX: i32 = 65536;
        unsafe extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        let (mmap_max, trim_threshold) = if retain {
            (0, i32::MAX)
        } else {
            (DEFAULT_MMAP_MAX, DEFAULT_TRIM_THRESHOLD)
        };
        // SAFETY: `mallopt` only changes allocator thresholds; any value is accepted or refused.
        let applied = unsafe {
            mallopt(M_MMAP_MAX, mmap_max) == 1 && mallopt(M_TRIM_THRESHOLD, trim_threshold) == 1
        };
        RETAINING.store(retain && applied, Ordering::Relaxed);
        applied
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = retain;
        false
    }
}

/// Whether freed memory is being retained ([`retain_freed_memory`]).
pub fn retaining_freed_memory() -> bool {
    RETAINING.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The resident set is the process's: the tests that measure it run one at a time.
    static RESIDENT_SET: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn rss_is_read_and_its_peak_covers_a_touched_buffer() {
        let _alone = RESIDENT_SET.lock().unwrap_or_else(|e| e.into_inner());
        let Some(before) = rss() else {
            return; // not Linux: nothing to read
        };
        assert!(before.current > 0 && before.peak >= before.current);
        // Touch every page, so that the OS has to back it.
        let mut buffer = vec![0u8; 64 << 20];
        for page in buffer.chunks_mut(4096) {
            page[0] = 1;
        }
        std::hint::black_box(&buffer);
        let after = rss().unwrap();
        assert!(
            after.peak >= before.current + (60 << 20),
            "{before:?} {after:?}"
        );
        drop(buffer);
    }

    /// The span's peak covers what the work touched and freed again; its start is below it.
    #[test]
    fn rss_during_reports_the_peak_of_its_work() {
        let _alone = RESIDENT_SET.lock().unwrap_or_else(|e| e.into_inner());
        let ((), span) = rss_during(|| {
            let mut buffer = vec![0u8; 64 << 20];
            for page in buffer.chunks_mut(4096) {
                page[0] = 1;
            }
            std::hint::black_box(&buffer);
        });
        let Some(span) = span else {
            return; // not Linux, or the peak cannot be reset: nothing to read
        };
        assert!(span.peak >= span.before + (60 << 20), "{span:?}");
    }

    #[test]
    fn without_the_allocator_installed_there_are_no_heap_figures() {
        // This test binary does not install `CountingAllocator`.
        assert_eq!(heap(), None);
    }
}
