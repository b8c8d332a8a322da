//! The checkpoints of an output folder as one run's history: which record to resume, which to
//! keep (`output.keep_last`), which files a failed write orphaned, and moving a history aside
//! (an older checkpoint resumed on purpose, a fresh run with `output.overwrite`).
//!
//! A checkpoint of step N is its record `step_N.json` and the two data files it names,
//! `step_N.<write>.model.safetensors` and `step_N.<write>.optim.safetensors`; a record is written
//! last, so a checkpoint exists exactly when its record does.

use std::path::{Path, PathBuf};

use crate::checkpoint::{checkpoint_records, file_step, read_record};
use crate::error::TrainError;

fn output_error(dir: &Path, problem: String) -> TrainError {
    TrainError::Output {
        path: dir.to_path_buf(),
        problem,
    }
}

/// The step a checkpoint's data file belongs to (`step_<digits>.<…>.safetensors`).
fn data_file_step(name: &str) -> Option<usize> {
    file_step(name).and_then(|(step, rest)| rest.ends_with(".safetensors").then_some(step))
}

/// The data files of `dir` (regular files named `step_<N>.….safetensors`), with their steps.
fn data_files(dir: &Path) -> Vec<(usize, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_file()))
        .filter_map(|entry| {
            let step = data_file_step(&entry.file_name().to_string_lossy())?;
            Some((step, entry.path()))
        })
        .collect()
}

/// The files of the checkpoint whose record is `record`: the record and the data files it
/// names, or, for a record that cannot be read, every data file of its step.
fn checkpoint_files(dir: &Path, step: usize, record: &Path) -> Vec<PathBuf> {
    let named: Vec<PathBuf> = match read_record(record) {
        Ok(read) => [read.model.file, read.optimizer.file]
            .into_iter()
            .map(|file| dir.join(file))
            .filter(|path| path.parent() == Some(dir) && path.is_file())
            .collect(),
        Err(_) => data_files(dir)
            .into_iter()
            .filter(|(of, _)| *of == step)
            .map(|(_, path)| path)
            .collect(),
    };
    let mut files = vec![record.to_path_buf()];
    files.extend(named);
    files
}

/// Removes the data files of `dir` that no record names: those of a write killed before its
/// record (no record of that step) and those a later write of the same step replaced. Files of
/// a record that cannot be read are kept (they may be all that is left of it). Returns them.
pub fn remove_orphans(dir: &Path) -> Result<Vec<PathBuf>, TrainError> {
    let records = checkpoint_records(dir);
    let mut named = std::collections::BTreeSet::new();
    let mut unreadable = std::collections::BTreeSet::new();
    for (step, record) in &records {
        match read_record(record) {
            Ok(read) => named.extend([dir.join(read.model.file), dir.join(read.optimizer.file)]),
            Err(_) => {
                unreadable.insert(*step);
            }
        }
    }
    let mut removed = Vec::new();
    for (step, path) in data_files(dir) {
        if named.contains(&path) || unreadable.contains(&step) {
            continue;
        }
        std::fs::remove_file(&path)
            .map_err(|err| output_error(dir, format!("cannot remove {}: {err}", path.display())))?;
        removed.push(path);
    }
    removed.sort();
    Ok(removed)
}

/// Keeps the newest `keep` checkpoints of `dir` and removes the others, each record before its
/// files (a kill in between leaves orphans that `remove_orphans` clears); 0 keeps all.
/// Returns the records removed.
pub fn keep_last(dir: &Path, keep: usize) -> Result<Vec<PathBuf>, TrainError> {
    if keep == 0 {
        return Ok(Vec::new());
    }
    let mut removed = Vec::new();
    for (step, record) in checkpoint_records(dir).into_iter().skip(keep) {
        for path in checkpoint_files(dir, step, &record) {
            std::fs::remove_file(&path).map_err(|err| {
                output_error(dir, format!("cannot remove {}: {err}", path.display()))
            })?;
        }
        removed.push(record);
    }
    Ok(removed)
}

/// Moves the checkpoints of `dir` newer than `after` (all of them for `None`), and for `None`
/// its `metrics.jsonl` and TensorBoard event files too, into the new subfolder `dir/<folder>` (a numbered name if taken).
/// Returns the subfolder, or `None` when there was nothing to move.
pub fn set_aside(
    dir: &Path,
    after: Option<usize>,
    folder: &str,
) -> Result<Option<PathBuf>, TrainError> {
    let mut files: Vec<PathBuf> = checkpoint_records(dir)
        .into_iter()
        .filter(|(step, _)| after.is_none_or(|after| *step > after))
        .flat_map(|(step, record)| checkpoint_files(dir, step, &record))
        .collect();
    if after.is_none() {
        let unnamed: Vec<PathBuf> = data_files(dir)
            .into_iter()
            .map(|(_, path)| path)
            .filter(|path| !files.contains(path))
            .collect();
        files.extend(unnamed);
        let metrics = dir.join("metrics.jsonl");
        if metrics.is_file() {
            files.push(metrics);
        }
        let events = std::fs::read_dir(dir).into_iter().flatten().flatten();
        files.extend(events.map(|entry| entry.path()).filter(|path| {
            path.file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with("events.out.tfevents."))
        }));
    }
    if files.is_empty() {
        return Ok(None);
    }
    let to = (0..)
        .map(|n| match n {
            0 => dir.join(folder),
            n => dir.join(format!("{folder}-{n}")),
        })
        .find(|path| !path.exists())
        .expect("some numbered name is free");
    std::fs::create_dir(&to)
        .map_err(|err| output_error(dir, format!("cannot create {}: {err}", to.display())))?;
    // Records first, so a kill part-way leaves no record whose files have gone.
    files.sort_by_key(|path| path.extension().is_none_or(|ext| ext != "json"));
    for path in files {
        let name = path.file_name().expect("listed files have names");
        std::fs::rename(&path, to.join(name)).map_err(|err| {
            output_error(
                dir,
                format!("cannot move {} to {}: {err}", path.display(), to.display()),
            )
        })?;
    }
    std::fs::File::open(dir)
        .and_then(|folder| folder.sync_all())
        .map_err(|err| output_error(dir, format!("cannot sync: {err}")))?;
    Ok(Some(to))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(dir: &Path, name: &str, bytes: &[u8]) {
        std::fs::write(dir.join(name), bytes).unwrap();
    }

    #[test]
    fn data_file_names_give_their_steps() {
        assert_eq!(
            data_file_step("step_000012.ab12.model.safetensors"),
            Some(12)
        );
        assert_eq!(
            data_file_step("step_1000000.x.optim.safetensors"),
            Some(1_000_000)
        );
        assert_eq!(data_file_step("step_000012.json"), None);
        assert_eq!(data_file_step("step_x.model.safetensors"), None);
        assert_eq!(data_file_step("other.safetensors"), None);
    }

    #[test]
    fn files_of_a_step_without_a_record_are_orphans_and_an_unreadable_records_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        touch(dir.path(), "step_000004.aa.model.safetensors", b"x");
        touch(dir.path(), "step_000004.aa.optim.safetensors", b"x");
        touch(dir.path(), "step_000006.bb.model.safetensors", b"x");
        touch(dir.path(), "step_000006.json", b"{ not a record");
        touch(dir.path(), "notes.safetensors", b"x");
        let removed = remove_orphans(dir.path()).unwrap();
        assert_eq!(
            removed,
            vec![
                dir.path().join("step_000004.aa.model.safetensors"),
                dir.path().join("step_000004.aa.optim.safetensors"),
            ]
        );
        assert!(dir.path().join("step_000006.bb.model.safetensors").exists());
        assert!(dir.path().join("notes.safetensors").exists());
    }

    #[test]
    fn keep_last_removes_the_oldest_records_and_their_files() {
        let dir = tempfile::tempdir().unwrap();
        for step in [2, 4, 10] {
            touch(dir.path(), &format!("step_{step:06}.json"), b"{}");
            touch(
                dir.path(),
                &format!("step_{step:06}.w.model.safetensors"),
                b"x",
            );
        }
        let removed = keep_last(dir.path(), 2).unwrap();
        assert_eq!(removed, vec![dir.path().join("step_000002.json")]);
        assert!(!dir.path().join("step_000002.w.model.safetensors").exists());
        assert!(dir.path().join("step_000004.json").exists());
        assert!(dir.path().join("step_000010.w.model.safetensors").exists());
        assert!(keep_last(dir.path(), 0).unwrap().is_empty());
    }

    #[test]
    fn set_aside_moves_later_checkpoints_into_a_fresh_subfolder() {
        let dir = tempfile::tempdir().unwrap();
        for step in [2, 4, 6] {
            touch(dir.path(), &format!("step_{step:06}.json"), b"{}");
            touch(
                dir.path(),
                &format!("step_{step:06}.w.model.safetensors"),
                b"x",
            );
        }
        touch(dir.path(), "metrics.jsonl", b"{}\n");
        touch(dir.path(), "events.out.tfevents.1.host.7", b"");
        let to = set_aside(dir.path(), Some(2), "superseded")
            .unwrap()
            .unwrap();
        assert_eq!(to, dir.path().join("superseded"));
        assert!(to.join("step_000006.json").exists());
        assert!(to.join("step_000004.w.model.safetensors").exists());
        assert!(dir.path().join("step_000002.json").exists());
        assert!(dir.path().join("metrics.jsonl").exists());
        assert_eq!(set_aside(dir.path(), Some(2), "superseded").unwrap(), None);
        let all = set_aside(dir.path(), None, "superseded").unwrap().unwrap();
        assert_eq!(all, dir.path().join("superseded-1"));
        assert!(all.join("metrics.jsonl").exists());
        assert!(all.join("events.out.tfevents.1.host.7").exists());
        assert!(all.join("step_000002.w.model.safetensors").exists());
        assert!(checkpoint_records(dir.path()).is_empty());
    }
}
