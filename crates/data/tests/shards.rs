//! Shard round trips, every malformed-header case, and the loader's offsets against the
//! reference's arithmetic.

use std::path::{Path, PathBuf};

use brainfloat_data::{
    DistributedLoader, HEADER_BYTES, LoaderPosition, SHARD_MAGIC, Shard, shard_bytes, shard_paths,
    write_shard,
};

fn shard_with(dir: &Path, name: &str, tokens: &[u32]) -> PathBuf {
    let path = dir.join(name);
    write_shard(&path, tokens).unwrap();
    path
}

fn open_error(dir: &Path, bytes: &[u8]) -> String {
    let path = dir.join("bad.bin");
    std::fs::write(&path, bytes).unwrap();
    let err = Shard::open(&path).unwrap_err().to_string();
    assert!(err.contains("bad.bin"), "the error names the file: {err}");
    err
}

#[test]
fn shards_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let tokens: Vec<u32> = (0..1000u32).map(|i| i * 7919 % 65536).collect();
    let path = shard_with(dir.path(), "a.bin", &tokens);
    let shard = Shard::open(&path).unwrap();
    assert_eq!(shard.len(), 1000);
    assert_eq!(shard.window(0, 1000).unwrap(), tokens);
    assert_eq!(shard.token(999).unwrap(), tokens[999]);
    assert_eq!(
        std::fs::metadata(&path).unwrap().len() as usize,
        HEADER_BYTES + 2000
    );
    // The empty shard is valid too.
    assert!(
        Shard::open(&shard_with(dir.path(), "e.bin", &[]))
            .unwrap()
            .is_empty()
    );
}

#[test]
fn the_golden_fixture_is_a_valid_shard() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/golden/tokens.bin");
    let shard = Shard::open(&path).unwrap();
    assert_eq!(shard.len(), 1025);
    assert_eq!(shard.token(0).unwrap(), 1);
    shard.check_vocab(512).unwrap();
}

/// Ids past 16 bits make a version-2 shard of 32-bit ids, read back exactly; ids that fit stay
/// in llm.c's version 1, byte for byte what llm.c writes.
#[test]
fn wide_ids_go_into_version_2_shards() {
    let dir = tempfile::tempdir().unwrap();
    let wide: Vec<u32> = vec![0, 65_535, 65_536, 128_255, 7];
    let path = shard_with(dir.path(), "wide.bin", &wide);
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(i32::from_le_bytes(bytes[4..8].try_into().unwrap()), 2);
    assert_eq!(bytes.len(), HEADER_BYTES + 4 * wide.len());
    let shard = Shard::open(&path).unwrap();
    assert_eq!(shard.window(0, wide.len()).unwrap(), wide);
    assert_eq!(shard.token(3).unwrap(), 128_255);
    let err = shard.check_vocab(100_000).unwrap_err().to_string();
    assert!(err.contains("token id 128255 at position 3"), "{err}");
    let narrow = shard_bytes(&[0u32, 65_535]);
    assert_eq!(i32::from_le_bytes(narrow[4..8].try_into().unwrap()), 1);
    assert_eq!(&narrow[HEADER_BYTES..], &[0, 0, 255, 255]);
}

#[test]
fn every_malformed_header_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let good = shard_bytes(&[1u16, 2, 3, 4]);
    let with_word = |index: usize, value: i32| {
        let mut bytes = good.clone();
        bytes[4 * index..4 * index + 4].copy_from_slice(&value.to_le_bytes());
        bytes
    };
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (good[..100].to_vec(), "truncated header: 100 bytes"),
        (Vec::new(), "truncated header: 0 bytes"),
        (with_word(0, 20240521), "wrong magic number 20240521"),
        (
            with_word(1, 7),
            "unsupported version 7 (expected 1: 16-bit token ids, or 2: 32-bit)",
        ),
        (
            with_word(2, 5),
            "header says 5 tokens (10 bytes) but the file holds 4 tokens (8 bytes)",
        ),
        (with_word(2, -1), "header says -1 tokens"),
        (
            good[..good.len() - 2].to_vec(),
            "header says 4 tokens (8 bytes) but the file holds 3 tokens",
        ),
        (
            good[..good.len() - 1].to_vec(),
            "odd token payload of 7 bytes",
        ),
        (
            [good.clone(), vec![0, 0]].concat(),
            "but the file holds 5 tokens",
        ),
        // A version-2 shard's ids are 4 bytes: the same payload is 2 tokens there, not 4.
        (
            with_word(1, 2),
            "header says 4 tokens (16 bytes) but the file holds 2 tokens",
        ),
        (
            {
                let wide = shard_bytes(&[70_000u32, 1]);
                wide[..wide.len() - 2].to_vec()
            },
            "ragged token payload of 6 bytes: tokens are 4-byte uint32",
        ),
    ];
    for (bytes, message) in cases {
        let err = open_error(dir.path(), &bytes);
        assert!(err.contains(message), "expected `{message}` in: {err}");
    }
    let err = Shard::open(&dir.path().join("missing.bin"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing.bin: cannot open"), "{err}");
    assert_eq!(SHARD_MAGIC, 20240520);
}

#[test]
fn token_ids_beyond_the_vocabulary_are_found() {
    let dir = tempfile::tempdir().unwrap();
    let shard = Shard::open(&shard_with(dir.path(), "v.bin", &[5, 50256, 50304, 7])).unwrap();
    shard.check_vocab(50305).unwrap();
    let err = shard.check_vocab(50304).unwrap_err().to_string();
    assert!(
        err.ends_with("token id 50304 at position 2 is outside the vocabulary of 50304"),
        "{err}"
    );
}

#[test]
fn a_shard_truncated_after_it_was_opened_is_an_error_naming_it_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let tokens: Vec<u32> = (0..10_000).map(|i| i % 500).collect();
    let path = shard_with(dir.path(), "t.bin", &tokens);
    let mut loader = DistributedLoader::new(vec![path.clone()], 4, 16, 0, 1).unwrap();
    assert_eq!(loader.next_window().unwrap(), tokens[..65]);
    // Another process cuts the file short (a memory map would die of SIGBUS here).
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(1100)
        .unwrap();
    let err = loader.next_window().unwrap_err().to_string();
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(
        err.contains("changed while training read it: 1100 bytes now, 21024 when opened"),
        "{err}"
    );
    let shard = Shard::open(&path).unwrap_err().to_string();
    assert!(shard.contains("header says 10000 tokens"), "{shard}");
}

#[test]
fn a_window_past_the_declared_tokens_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let shard = Shard::open(&shard_with(dir.path(), "w.bin", &[1, 2, 3])).unwrap();
    assert_eq!(shard.window(1, 2).unwrap(), [2, 3]);
    let err = shard.window(2, 2).unwrap_err().to_string();
    assert!(
        err.contains("tokens 2..4 asked of a shard of 3 tokens"),
        "{err}"
    );
    assert!(shard.window(usize::MAX, 2).is_err());
}

/// The reference's loader, transcribed: which (shard, offset) each rank reads, step by step.
fn reference_offsets(
    lens: &[usize],
    b: usize,
    t: usize,
    rank: usize,
    world: usize,
    steps: usize,
) -> Vec<(usize, usize)> {
    let (mut shard, mut position) = (0, rank * b * t);
    let mut out = Vec::new();
    for _ in 0..steps {
        out.push((shard, position));
        position += b * t * world;
        if position + (b * t * world + 1) > lens[shard] {
            shard = (shard + 1) % lens.len();
            position = rank * b * t;
        }
    }
    out
}

#[test]
fn two_ranks_read_what_the_reference_reads() {
    let dir = tempfile::tempdir().unwrap();
    // Token i of shard s is 1000·s + i, so a window tells where it came from.
    let lens = [157usize, 97, 130];
    let paths: Vec<PathBuf> = lens
        .iter()
        .enumerate()
        .map(|(s, &len)| {
            let tokens: Vec<u32> = (0..len).map(|i| (1000 * s + i) as u32).collect();
            shard_with(dir.path(), &format!("train_{s:03}.bin"), &tokens)
        })
        .collect();
    let (b, t, world) = (2, 8, 2);
    for rank in 0..world {
        let mut loader = DistributedLoader::new(paths.clone(), b, t, rank, world).unwrap();
        for (step, (shard, offset)) in reference_offsets(&lens, b, t, rank, world, 20)
            .into_iter()
            .enumerate()
        {
            let window = loader.next_window().unwrap();
            let want: Vec<u32> = (offset..offset + b * t + 1)
                .map(|i| (1000 * shard + i) as u32)
                .collect();
            assert_eq!(window, want, "rank {rank}, step {step}");
        }
    }
    // The two ranks' windows of one step are disjoint in inputs and adjacent.
    let mut r0 = DistributedLoader::new(paths.clone(), b, t, 0, world).unwrap();
    let mut r1 = DistributedLoader::new(paths.clone(), b, t, 1, world).unwrap();
    assert_eq!(
        r0.next_window().unwrap()[b * t],
        r1.next_window().unwrap()[0]
    );
}

#[test]
fn a_loader_resumes_from_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let paths = vec![
        shard_with(dir.path(), "a.bin", &(0..100).collect::<Vec<u32>>()),
        shard_with(dir.path(), "b.bin", &(1000..1100).collect::<Vec<u32>>()),
    ];
    let mut straight = DistributedLoader::new(paths.clone(), 2, 10, 0, 1).unwrap();
    let mut resumed = DistributedLoader::new(paths.clone(), 2, 10, 0, 1).unwrap();
    for _ in 0..5 {
        straight.next_window().unwrap();
    }
    let position = straight.position();
    assert_eq!(
        position,
        LoaderPosition {
            shard: 1,
            offset: 20
        }
    );
    resumed.seek(position).unwrap();
    for _ in 0..7 {
        assert_eq!(
            straight.next_window().unwrap(),
            resumed.next_window().unwrap()
        );
    }
    let err = resumed
        .seek(LoaderPosition {
            shard: 2,
            offset: 0,
        })
        .unwrap_err()
        .to_string();
    assert!(err.contains("names shard 2 but the set has 2"), "{err}");
}

#[test]
fn unusable_shard_sets_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let err = DistributedLoader::new(vec![], 2, 8, 0, 1)
        .unwrap_err()
        .to_string();
    assert!(err.contains("the shard set is empty"), "{err}");
    let small = shard_with(dir.path(), "small.bin", &[1; 20]);
    let err = DistributedLoader::new(vec![small], 2, 8, 0, 2)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("small.bin: holds 20 tokens, fewer than the 33"),
        "{err}"
    );
    let err = shard_paths(&dir.path().join("fineweb_val_*.bin"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("fineweb_val_*.bin: no shard matches"), "{err}");
}

#[test]
fn patterns_find_shards_in_name_order() {
    let dir = tempfile::tempdir().unwrap();
    for name in [
        "x_train_002.bin",
        "x_train_000.bin",
        "x_val_000.bin",
        "x_train_001.bin",
    ] {
        shard_with(dir.path(), name, &[1, 2]);
    }
    let names: Vec<String> = shard_paths(&dir.path().join("x_train_*.bin"))
        .unwrap()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        ["x_train_000.bin", "x_train_001.bin", "x_train_002.bin"]
    );
}
