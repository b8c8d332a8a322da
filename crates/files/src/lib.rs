//! Files written whole or not at all: atomic writes, the temporaries that killed writers leave
//! behind, and the SHA-256 that proves a file is the one written. Shards (`brainfloat-data`) and
//! checkpoints (`brainfloat-trainer`) are written through it.
//!
//! A file is written to `.NAME.tmp-HOST-BOOT-PID` in its folder under an exclusive lock,
//! fsynced and renamed over `NAME`: a reader sees the old file or the new one, never a partial
//! one. A writer killed mid-write (SIGKILL, a crash, a power cut) leaves its temporary, and its
//! lock goes with it. [`remove_stale_temporaries`] removes only this host's temporaries, and of
//! those only a previous boot's or ones whose lock is free: a PID alone cannot tell (a restarted
//! container's trainer often gets its dead predecessor's PID), nor can another host's PIDs on a
//! shared file system.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Marks a temporary file's name: `.NAME` + this + `HOST-BOOT-PID` of its writer (or, from
/// earlier versions, the PID alone).
const TEMPORARY_MARK: &str = ".tmp-";

/// Who writes temporaries: this host's name (characters other than letters, digits, `_` and
/// `.` replaced by `_`, so that `-` separates the fields), the first 8 hex digits of this boot's
/// id, and the PID.
struct Writer {
    host: String,
    boot: String,
    pid: u32,
}

/// This machine's host name, with every character but letters, digits, `_` and `.` replaced by
/// `_` (fit for a file name); empty where the kernel does not say.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '_' | '.' => c,
            _ => '_',
        })
        .collect()
}

impl Writer {
    fn this_process() -> Self {
        let host = host_name();
        let boot: String = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|id| id.chars().filter(char::is_ascii_hexdigit).take(8).collect())
            .unwrap_or_default();
        Self {
            host: if host.is_empty() { "host".into() } else { host },
            boot: if boot.is_empty() { "0".into() } else { boot },
            pid: std::process::id(),
        }
    }

    fn tag(&self) -> String {
        format!("{}-{}-{}", self.host, self.boot, self.pid)
    }
}

fn folder_of(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// The temporary file [`write_atomic`] writes `path`'s new content to, from this process:
/// `.NAME.tmp-HOST-BOOT-PID` beside it.
pub fn temporary_path(path: &Path) -> PathBuf {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    folder_of(path).join(format!(
        ".{name}{TEMPORARY_MARK}{}",
        Writer::this_process().tag()
    ))
}

/// Writes `bytes` to `path` atomically: to a temporary file in the same folder, fsynced, then
/// renamed over `path` (and the folder fsynced), so a reader sees the old file or the new one,
/// never a partial one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = folder_of(path);
    if path.file_name().is_none() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "path has no file name",
        ));
    }
    let tmp = temporary_path(path);
    let result = (|| {
        let mut file = File::create(&tmp)?;
        // Held until the file is closed, or its writer dies: what tells cleanup it is live.
        file.lock()?;
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

/// Who wrote a temporary file, from its name.
#[derive(Debug, PartialEq, Eq)]
enum TemporaryWriter {
    /// `.NAME.tmp-HOST-BOOT-PID`.
    Tagged { host: String, boot: String },
    /// `.NAME.tmp-PID`, as earlier versions named them.
    Pid(i32),
}

/// The writer of a temporary file named as [`write_atomic`] names them, or `None` for any other
/// name.
fn temporary_writer(file_name: &str) -> Option<TemporaryWriter> {
    let (stem, tag) = file_name.rsplit_once(TEMPORARY_MARK)?;
    if !stem.starts_with('.') || stem.len() < 2 {
        return None;
    }
    let mut fields = tag.rsplitn(3, '-');
    let pid: i32 = fields.next()?.parse().ok().filter(|pid| *pid > 0)?;
    match (fields.next(), fields.next()) {
        (None, None) => Some(TemporaryWriter::Pid(pid)),
        (Some(boot), Some(host)) if !host.is_empty() && !boot.is_empty() => {
            Some(TemporaryWriter::Tagged {
                host: host.to_string(),
                boot: boot.to_string(),
            })
        }
        _ => None,
    }
}

/// Whether the temporary at `path`, written by `writer`, may still be written to: another
/// host's always may (its processes cannot be seen from here); this host's may only in this
/// boot and while its writer holds its lock.
fn is_live(path: &Path, writer: &TemporaryWriter, this: &Writer) -> io::Result<bool> {
    match writer {
        TemporaryWriter::Pid(pid) => Ok(is_alive(*pid)),
        TemporaryWriter::Tagged { host, .. } if *host != this.host => Ok(true),
        TemporaryWriter::Tagged { boot, .. } if *boot != this.boot => Ok(false),
        TemporaryWriter::Tagged { .. } => match File::open(path)?.try_lock() {
            Ok(()) => Ok(false),
            Err(fs::TryLockError::WouldBlock) => Ok(true),
            Err(fs::TryLockError::Error(err)) => Err(err),
        },
    }
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

/// Removes the temporaries of [`write_atomic`] in `dir` whose writer is gone (see the module's
/// documentation), and returns their paths. A live writer's temporary, or another host's, is
/// left alone; a missing folder has none.
pub fn remove_stale_temporaries(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let this = Writer::this_process();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err),
    };
    let mut removed = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(writer) = temporary_writer(&name.to_string_lossy()) else {
            continue;
        };
        if !entry.file_type()?.is_file() || is_live(&entry.path(), &writer, &this)? {
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
    fn temporary_names_give_their_writers() {
        let this = Writer::this_process();
        assert!(!this.host.contains('-') && this.boot.len() <= 8);
        let tagged = format!(".a.bin{TEMPORARY_MARK}{}", this.tag());
        assert_eq!(
            temporary_writer(&tagged),
            Some(TemporaryWriter::Tagged {
                host: this.host.clone(),
                boot: this.boot.clone()
            })
        );
        assert_eq!(
            temporary_writer(&format!(".a.bin{TEMPORARY_MARK}17")),
            Some(TemporaryWriter::Pid(17))
        );
        assert_eq!(
            temporary_writer(&format!(".a.bin{TEMPORARY_MARK}-x-17")),
            None
        );
        assert_eq!(temporary_writer("a.bin"), None);
    }

    /// Held by the tests that lock files and the test that starts a process: a child holds
    /// copies of the parent's descriptors from its fork to its exec, and with them their locks.
    static FORKS: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn a_temporary_is_live_while_its_lock_is_held_whatever_its_pid() {
        let _alone = FORKS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let dir = tempfile::tempdir().unwrap();
        let this = Writer::this_process();
        // This process's own PID: a PID check would call both live.
        let held = dir
            .path()
            .join(format!(".held{TEMPORARY_MARK}{}", this.tag()));
        let dropped = dir
            .path()
            .join(format!(".dropped{TEMPORARY_MARK}{}", this.tag()));
        let other_boot = dir.path().join(format!(
            ".boot{TEMPORARY_MARK}{}-ffffffff-{}",
            this.host, this.pid
        ));
        let other_host = dir
            .path()
            .join(format!(".host{TEMPORARY_MARK}elsewhere-{}-1", this.boot));
        let writer = File::create(&held).unwrap();
        writer.lock().unwrap();
        for path in [&dropped, &other_boot, &other_host] {
            fs::write(path, b"x").unwrap();
        }
        let removed = remove_stale_temporaries(dir.path()).unwrap();
        let expected = if this.boot == "ffffffff" {
            vec![dropped.clone()]
        } else {
            vec![other_boot.clone(), dropped.clone()]
        };
        assert_eq!(removed, expected);
        assert!(held.exists() && other_host.exists());
        drop(writer);
        assert_eq!(remove_stale_temporaries(dir.path()).unwrap(), vec![held]);
    }

    #[test]
    fn only_dead_writers_temporaries_are_removed() {
        let _alone = FORKS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
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
