//! The default corpus is fetched and unpacked by the binary alone: no `npm`, no `tar`, nothing
//! on the PATH; its shards are the ones the `npm pack` route made, byte for byte. Needs the npm
//! registry (registry.npmjs.org), as the first `cargo xtask train` does.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_brainfloat");

/// SHA-256 of the shards that `npm pack` + `tar` + the tokenizer made (before the fetch moved
/// into the binary).
const TRAIN_SHA256: &str = "c200c1520f4f010567573b0dfb9bd8e3968b8ea78f88410485b456635f6d7147";
const VAL_SHA256: &str = "60bd8913bf9e0054899428d46fc9e3f76d28799319980b37c422ebb7d985c73d";

#[test]
fn the_default_corpus_needs_nothing_but_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let empty_path = dir.path().join("no-tools");
    std::fs::create_dir(&empty_path).unwrap();
    let data = dir.path().join("sotu");
    let run = || {
        Command::new(BIN)
            .args(["data", "--dir"])
            .arg(&data)
            .env("PATH", &empty_path)
            .output()
            .unwrap()
    };
    let first = run();
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(
        first.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(
        stdout.contains("233 documents → 1872565 train + 201947 val tokens"),
        "{stdout}"
    );
    for (file, sha) in [
        ("sotu_train_000.bin", TRAIN_SHA256),
        ("sotu_val_000.bin", VAL_SHA256),
    ] {
        let bytes = std::fs::read(data.join(file)).unwrap();
        assert_eq!(brainfloat_files::sha256_hex(&bytes), sha, "{file}");
    }
    // The second time from what is there: no fetch.
    let second = run();
    assert!(second.status.success());
    assert!(String::from_utf8_lossy(&second.stdout).contains("already present"));
}
