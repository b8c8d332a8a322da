//! The output folder of a run: one trainer at a time (an advisory lock held for the whole run),
//! no temporaries of killed writers left behind, and room for a checkpoint, all checked before
//! the first step.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use brainfloat_files::remove_stale_temporaries;

use crate::error::TrainError;

/// The lock file's name in the output folder; it holds the trainer's PID.
pub const LOCK_FILE: &str = ".brainfloat.lock";

/// A claimed output folder: its lock is held until this is dropped, when the lock file is
/// removed. Readers (`eval`, `plot`) do not take it.
#[derive(Debug)]
pub struct OutputFolder {
    lock_path: PathBuf,
    // Holding the open file holds the lock.
    _lock: File,
}

fn output_error(dir: &Path, problem: String) -> TrainError {
    TrainError::Output {
        path: dir.to_path_buf(),
        problem,
    }
}

impl OutputFolder {
    /// Creates `dir` if needed and claims it: takes its lock (a second trainer on the folder
    /// stops here with the first one's PID), removes the temporaries of writers that are gone,
    /// and checks that the disk's free space and the process's file-size limit leave room for
    /// a checkpoint of `checkpoint_bytes` whose largest file is `largest_file` bytes.
    pub fn claim(dir: &Path, checkpoint_bytes: u64, largest_file: u64) -> Result<Self, TrainError> {
        std::fs::create_dir_all(dir)
            .map_err(|err| output_error(dir, format!("cannot create: {err}")))?;
        let folder = Self::lock(dir)?;
        for path in remove_stale_temporaries(dir)
            .map_err(|err| output_error(dir, format!("cannot clear stale temporaries: {err}")))?
        {
            tracing::info!(file = %path.display(), "removed a killed writer's temporary file");
        }
        check_room(dir, checkpoint_bytes, largest_file)?;
        Ok(folder)
    }

    fn lock(dir: &Path) -> Result<Self, TrainError> {
        let lock_path = dir.join(LOCK_FILE);
        let error = |err: std::io::Error| output_error(dir, format!("cannot lock: {err}"));
        loop {
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&lock_path)
                .map_err(error)?;
            match file.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => {
                    let mut holder = String::new();
                    let _ = file.read_to_string(&mut holder);
                    let holder = match holder.trim() {
                        "" => "a process that has not written its PID yet".to_string(),
                        pid => format!("pid {pid}"),
                    };
                    return Err(output_error(
                        dir,
                        format!(
                            "in use by another trainer ({holder}): two runs would mix their \
                             checkpoints and metrics; wait for it, stop it, or set another \
                             output.dir"
                        ),
                    ));
                }
                Err(TryLockError::Error(err)) => return Err(error(err)),
            }
            // The holder before us may have removed the file between our open and our lock:
            // then we hold a lock on a file nobody else can see, and start over.
            let same_file = match (file.metadata(), std::fs::metadata(&lock_path)) {
                (Ok(held), Ok(named)) => held.dev() == named.dev() && held.ino() == named.ino(),
                _ => false,
            };
            if !same_file {
                continue;
            }
            file.set_len(0).map_err(error)?;
            file.rewind().map_err(error)?;
            writeln!(file, "{}", std::process::id()).map_err(error)?;
            return Ok(Self {
                lock_path,
                _lock: file,
            });
        }
    }
}

impl Drop for OutputFolder {
    fn drop(&mut self) {
        // Removed while still locked, so no other trainer can be holding this file's lock.
        let _ = std::fs::remove_file(&self.lock_path);
    }
}

/// The free space of `dir`'s file system (statvfs) and the file-size limit (`ulimit -f`) against
/// one checkpoint: a full disk fails in the first second, not at the first checkpoint.
pub(crate) fn check_room(
    dir: &Path,
    checkpoint_bytes: u64,
    largest_file: u64,
) -> Result<(), TrainError> {
    let stats = rustix::fs::statvfs(dir)
        .map_err(|err| output_error(dir, format!("cannot read the free space: {err}")))?;
    let free = stats.f_bavail.saturating_mul(stats.f_frsize);
    if free < checkpoint_bytes {
        return Err(output_error(
            dir,
            format!(
                "{} free, a checkpoint needs {}: the disk is full or nearly",
                bytes(free),
                bytes(checkpoint_bytes)
            ),
        ));
    }
    let limit = rustix::process::getrlimit(rustix::process::Resource::Fsize).current;
    if let Some(limit) = limit.filter(|limit| *limit < largest_file) {
        return Err(output_error(
            dir,
            format!(
                "the file-size limit (ulimit -f) is {}, a checkpoint writes a file of {}",
                bytes(limit),
                bytes(largest_file)
            ),
        ));
    }
    Ok(())
}

/// `bytes` in the unit that reads best.
fn bytes(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} bytes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_claim_names_the_first_and_a_released_folder_is_free_again() {
        let dir = tempfile::tempdir().unwrap();
        let first = OutputFolder::claim(dir.path(), 1, 1).unwrap();
        let err = OutputFolder::claim(dir.path(), 1, 1)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!(
                "in use by another trainer (pid {})",
                std::process::id()
            )),
            "{err}"
        );
        drop(first);
        assert!(!dir.path().join(LOCK_FILE).exists());
        OutputFolder::claim(dir.path(), 1, 1).unwrap();
    }

    #[test]
    fn a_checkpoint_larger_than_the_free_space_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = OutputFolder::claim(dir.path(), u64::MAX / 2, 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("a checkpoint needs"), "{err}");
        assert!(!dir.path().join(LOCK_FILE).exists(), "the lock is released");
    }
}
