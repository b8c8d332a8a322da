//! Atomic file writes, the temporaries that killed writers leave behind, and the SHA-256 that
//! proves a file is the one written.
//!
//! A file is written to `.NAME.tmp-PID` in its folder, fsynced and renamed over `NAME`: a reader
//! sees the old file or the new one, never a partial one. A writer killed mid-write (SIGKILL, a
//! crash, a power cut) leaves its temporary; the PID in the name tells whether that writer is
//! gone, so [`remove_stale_temporaries`] can clear them without touching a live writer's.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Marks a temporary file's name: `.NAME` + this + the writer's PID.
const TEMPORARY_MARK: &str = ".tmp-";

fn folder_of(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// Writes `bytes` to `path` atomically: to a temporary file in the same folder, fsynced, then
/// renamed over `path` (and the folder fsynced), so a reader sees the old file or the new one,
/// never a partial one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = folder_of(path);
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let tmp = dir.join(format!(
        ".{}{TEMPORARY_MARK}{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The SHA-256 of `bytes`, as lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The PID of the writer of a temporary file named `.NAME.tmp-PID`, or `None` for any other
/// name.
fn temporary_writer(file_name: &str) -> Option<i32> {
    let (stem, pid) = file_name.rsplit_once(TEMPORARY_MARK)?;
    if !stem.starts_with('.') || stem.len() < 2 {
        return None;
    }
    pid.parse().ok().filter(|pid| *pid > 0)
}

/// Whether process `pid` exists (signal 0 reaches it, or it exists under another user).
fn is_alive(pid: i32) -> bool {
    let Some(pid) = rustix::process::Pid::from_raw(pid) else {
        return false;
    };
    match rustix::process::test_kill_process(pid) {
        Ok(()) => true,
        Err(err) => err != rustix::io::Errno::SRCH,
    }
}

/// Removes the temporaries of [`write_atomic`] in `dir` whose writer process is gone, and
/// returns their paths. A temporary of a live process is left alone; a missing folder has none.
pub fn remove_stale_temporaries(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err),
    };
    let mut removed = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(pid) = temporary_writer(&name.to_string_lossy()) else {
            continue;
        };
        if is_alive(pid) || !entry.file_type()?.is_file() {
            continue;
        }
        fs::remove_file(entry.path())?;
        removed.push(entry.path());
    }
    removed.sort();
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_a_known_text() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn writes_atomically_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.bin");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn only_dead_writers_temporaries_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        // A process that has exited: its PID is free (reuse within this test is vanishingly rare).
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let live = std::process::id();
        let names = [
            format!(".step_000002.json{TEMPORARY_MARK}{dead}"),
            format!(".train_000.bin{TEMPORARY_MARK}{live}"),
            "step_000002.json".to_string(),
            format!("no_dot.json{TEMPORARY_MARK}{dead}"),
            format!(".odd{TEMPORARY_MARK}abc"),
        ];
        for name in &names {
            fs::write(dir.path().join(name), b"x").unwrap();
        }
        let removed = remove_stale_temporaries(dir.path()).unwrap();
        assert_eq!(removed, vec![dir.path().join(&names[0])]);
        for name in &names[1..] {
            assert!(dir.path().join(name).exists(), "{name} was removed");
        }
        assert!(
            remove_stale_temporaries(&dir.path().join("absent"))
                .unwrap()
                .is_empty()
        );
    }
}
