//! Running out of memory under the counting allocator, in a child process under an
//! address-space limit: the limit is found and named, `fallibly` hands a failed allocation
//! back, and one outside it ends the process with an error line and status 1, not an abort.

use std::process::Command;

#[global_allocator]
static HEAP: brainfloat_memory::CountingAllocator = brainfloat_memory::CountingAllocator;

/// Set in the child: run [`in_the_child`]'s body.
const CHILD: &str = "BRAINFLOAT_MEMORY_TEST_CHILD";
const GIB: usize = 1 << 30;

#[test]
fn in_the_child() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let vm_size: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmSize:"))
        .and_then(|v| v.trim().strip_suffix("kB")?.trim().parse().ok())
        .unwrap();
    let limit = vm_size * 1024 + (256 << 20);
    rustix::process::setrlimit(
        rustix::process::Resource::As,
        rustix::process::Rlimit {
            current: Some(limit),
            maximum: Some(limit),
        },
    )
    .unwrap();
    let least = brainfloat_memory::memory_limit().unwrap();
    println!("limit: {} room {}", least.source, least.room);
    let refused = brainfloat_memory::fallibly(|| Vec::<u8>::new().try_reserve_exact(GIB));
    println!(
        "fallible: {}",
        if refused.is_err() {
            "refused"
        } else {
            "granted"
        }
    );
    let buffer = vec![1u8; GIB];
    println!("allocated {}", std::hint::black_box(buffer).len());
}

#[test]
fn an_allocation_past_the_limit_is_an_error_line_and_status_1() {
    if !std::path::Path::new("/proc/self/status").exists() {
        return; // not Linux: no address-space limit to read
    }
    let output = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "in_the_child", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let both = format!("{stdout}\n{stderr}");
    assert!(
        stdout.contains("limit: the address-space limit (RLIMIT_AS"),
        "{both}"
    );
    assert!(stdout.contains("fallible: refused"), "{both}");
    assert!(!stdout.contains("allocated"), "{both}");
    assert_eq!(output.status.code(), Some(1), "{both}");
    assert!(
        stderr.contains("error: out of memory: an allocation of 1073741824 bytes failed"),
        "{both}"
    );
    assert!(
        !both.contains("panicked") && !both.contains("backtrace"),
        "{both}"
    );
}
