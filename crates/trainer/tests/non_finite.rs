//! Injected non-finite values (`BRAINFLOAT_INJECT_NON_FINITE`) under both policies. One test:
//! the injection is read from the process environment.

mod common;

use brainfloat_trainer::{INJECT_NON_FINITE, Trainer};

#[test]
fn injected_nan_is_never_applied_and_follows_the_policy() {
    let dir = tempfile::tempdir().unwrap();
    let device = brainfloat_test_support::test_device();
    // SAFETY: the only test of this binary; nothing else reads the environment concurrently.
    unsafe { std::env::set_var(INJECT_NON_FINITE, "loss@2,grad@4") };

    // skip: steps 2 and 4 are counted and leave the model exactly as it was.
    let config = common::config(dir.path(), "fp32", &["train.on_non_finite=skip"]);
    let mut trainer = Trainer::builder(config).build(&device).unwrap();
    trainer.train_step().unwrap();
    let before = common::flat_params(&trainer);
    let stats = trainer.train_step().unwrap();
    assert!(stats.skipped && stats.loss.is_nan(), "{stats:?}");
    assert_eq!(
        common::flat_params(&trainer),
        before,
        "a NaN loss changed the weights"
    );
    assert!(!trainer.train_step().unwrap().skipped);
    let before = common::flat_params(&trainer);
    let stats = trainer.train_step().unwrap();
    assert!(stats.skipped && stats.loss.is_finite() && stats.grad_norm.is_nan());
    assert_eq!(
        common::flat_params(&trainer),
        before,
        "NaN gradients changed the weights"
    );
    let summary = trainer.run().unwrap();
    assert_eq!((summary.skipped_steps, summary.steps), (2, 6));
    assert!(summary.val_loss.unwrap().is_finite());

    // stop: the run ends at step 2 with a clear error naming the last good checkpoint,
    // weights untouched, nothing of the bad step saved.
    drop(trainer); // a folder takes one trainer at a time
    let elsewhere = format!("output.dir={}", dir.path().join("stop").display());
    let config = common::config(dir.path(), "fp32", &[&elsewhere]);
    let mut trainer = Trainer::builder(config).build(&device).unwrap();
    trainer.train_step().unwrap();
    let kept = trainer.checkpoint().unwrap();
    let before = common::flat_params(&trainer);
    let err = trainer.train_step().unwrap_err().to_string();
    assert!(
        err.starts_with("training loss is NaN at step 2; stopped"),
        "{err}"
    );
    assert!(
        err.contains(&format!("last good checkpoint: {}", kept.display())),
        "{err}"
    );
    assert_eq!(common::flat_params(&trainer), before);
    assert!(!dir.path().join("stop/step_000002.json").exists());

    // A bad injection is a clear error.
    drop(trainer);
    unsafe { std::env::set_var(INJECT_NON_FINITE, "nan@x") };
    let config = common::config(dir.path(), "fp32", &[]);
    let err = Trainer::builder(config)
        .build(&device)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("`nan@x` is not loss@STEP or grad@STEP"),
        "{err}"
    );
}
