//! Configuration errors name the key; the environment and the command line override the file.
//! (Its own test binary: it sets an environment variable.)

mod common;

use brainfloat_gpt::{ModelShape, ModelSize};
use brainfloat_precision::PrecisionPolicy;
use brainfloat_trainer::{ConfigSource, TrainConfig};

fn load(
    dir: &std::path::Path,
    toml_edit: impl Fn(String) -> String,
    overrides: &[&str],
) -> Result<TrainConfig, String> {
    let source = ConfigSource::Text {
        name: "test.toml".into(),
        toml: toml_edit(common::toml(dir, "bf16")),
    };
    let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    TrainConfig::load(&source, &overrides).map_err(|e| e.to_string())
}

#[test]
fn errors_name_their_key_and_overrides_apply_in_order() {
    // One test: the environment override must not leak into the other cases.
    the_shipped_presets_are_valid();
    bad_values_name_their_key();
    shape_keys_replace_the_sizes_values();
    fine_tuning_keys_parse_into_types();
    environment_then_command_line_override_the_file();
}

/// Weight decay per group, clipping, freezing by role and the schedules, from TOML into types;
/// absent, each is the record's (no decay, no clipping, nothing frozen, the trapezoid).
fn fine_tuning_keys_parse_into_types() {
    use brainfloat_precision::ParamRole;
    use brainfloat_trainer::{GroupValues, MatrixOptimizer, ScheduleKind};
    let dir = tempfile::tempdir().unwrap();
    let record = load(dir.path(), |t| t, &[]).unwrap();
    assert_eq!(record.optim.weight_decay, GroupValues::default());
    assert_eq!(
        (record.optim.max_grad_norm, record.optim.freeze.len()),
        (0.0, 0)
    );
    assert_eq!(record.train.schedule, ScheduleKind::Trapezoid);
    assert_eq!(record.optim.matrix_optimizer, MatrixOptimizer::Muon);
    let tuned = load(
        dir.path(),
        |t| {
            t.replace(
                "ns_steps = 5",
                "ns_steps = 5\nmax_grad_norm = 1.0\nfreeze = [\"embedding\", \"scalar\"]\n\
                 weight_decay = { head = 0.1, matrices = 0.01 }",
            )
        },
        &[
            "train.schedule=cosine",
            "train.min_lr_ratio=0.1",
            "optim.matrix_optimizer=adam",
        ],
    )
    .unwrap();
    assert_eq!(tuned.optim.matrix_optimizer, MatrixOptimizer::Adam);
    assert_eq!(
        tuned.optim.weight_decay,
        GroupValues {
            head: 0.1,
            matrices: 0.01,
            ..GroupValues::default()
        }
    );
    assert_eq!(tuned.optim.max_grad_norm, 1.0);
    assert_eq!(
        tuned.optim.freeze,
        [ParamRole::Embedding, ParamRole::Scalar]
    );
    let schedule = tuned.schedule();
    assert_eq!(schedule.kind, ScheduleKind::Cosine);
    assert!(
        (schedule.multiplier(5)
            - (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * 5.0 / 6.0).cos())))
        .abs()
            < 1e-12
    );
    let err = load(
        dir.path(),
        |t| t.replace("ns_steps = 5", "ns_steps = 5\nfreeze = [\"head\"]"),
        &[],
    )
    .unwrap_err();
    assert!(
        err.contains("config optim.freeze")
            && err.contains("unknown parameter role `head` (valid: embedding, hidden_matrix,"),
        "{err}"
    );
}

fn the_shipped_presets_are_valid() {
    let configs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    for size in ModelSize::ALL {
        let path = configs.join(format!("{size}.toml"));
        let config = TrainConfig::load(&ConfigSource::File(path), &[]).unwrap();
        assert_eq!(config.model.size, size);
        assert_eq!(config.train.precision, PrecisionPolicy::bf16());
    }
    let speedrun =
        TrainConfig::load(&ConfigSource::File(configs.join("speedrun.toml")), &[]).unwrap();
    assert_eq!(speedrun.tokens_per_step(), 524_288);
    assert_eq!(
        (speedrun.train.steps, speedrun.train.warmdown_steps),
        (3242, 926)
    );
    assert_eq!(speedrun.micro_batch_size(), 64);
}

/// Text replaced in the TOML, overrides, the expected message.
type Case<'a> = (Option<(&'a str, &'a str)>, &'a [&'a str], &'a str);

fn bad_values_name_their_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<Case> = vec![
        (
            Some(("steps = 6", "stepz = 6")),
            &[],
            "unknown field `stepz`",
        ),
        (Some(("steps = 6", "steps = \"many\"")), &[], "train.steps"),
        (
            None,
            &["train.grad_accum_steps=0"],
            "config train.grad_accum_steps: must be at least 1",
        ),
        (
            None,
            &["train.steps=0"],
            "config train.steps: must be at least 1",
        ),
        (
            None,
            &["optim.matrix_lr=-0.02"],
            "config optim.matrix_lr: must be a positive number, got -0.02",
        ),
        (
            None,
            &["optim.head_lr=0"],
            "config optim.head_lr: must be a positive number",
        ),
        (
            None,
            &["train.seq_len=65"],
            "config train.seq_len: 65 is longer than the model's maximum of 64 (model.max_seq_len)",
        ),
        (
            None,
            &["model.n_head=3"],
            "config model.d_model: d_model 64 is not divisible by n_head 3",
        ),
        (
            None,
            &["model.d_model=96", "model.n_head=32"],
            "config model.n_head: head dimension 3 (d_model 96 / n_head 32) must be even",
        ),
        (
            None,
            &["model.n_layer=0"],
            "config model.n_layer: n_layer must be at least 1",
        ),
        (
            None,
            &["model.max_seq_len=0"],
            "config model.max_seq_len: max_seq_len must be at least 1",
        ),
        (
            None,
            &["model.logit_softcap=-1"],
            "config model.logit_softcap: logit_softcap must be positive, got -1",
        ),
        (
            None,
            &["model.rope_base=0"],
            "config model.rope_base: rope_base must be positive, got 0",
        ),
        (None, &["model.n_heads=4"], "unknown field `n_heads`"),
        (
            None,
            &["train.grad_accum_steps=3"],
            "config train.batch_size: 4 sequences cannot be split over 1 rank(s) × 3 accumulation step(s)",
        ),
        (
            None,
            &["train.ranks=8"],
            "config train.batch_size: 4 sequences cannot be split over 8 rank(s)",
        ),
        (
            None,
            &["train.precision=bf17"],
            "config train.precision: unknown precision preset `bf17`",
        ),
        (
            None,
            &["model.size=huge"],
            "config model.size: unknown model size `huge`",
        ),
        (
            None,
            &["output.log_format=xml"],
            "config output.log_format: unknown log format `xml` (valid: human, json)",
        ),
        (
            None,
            &["train.warmdown_steps=7"],
            "config train.warmdown_steps",
        ),
        (
            None,
            &["optim.adam_beta2=1.5"],
            "config optim.adam_beta2: must be in [0, 1)",
        ),
        (
            None,
            &["train.schedule=step"],
            "config train.schedule: unknown schedule `step` (valid: trapezoid, cosine, linear)",
        ),
        (
            None,
            &["train.min_lr_ratio=2"],
            "config train.min_lr_ratio: must be in [0, 1], got 2",
        ),
        (
            None,
            &["optim.weight_decay.head=-1"],
            "config optim.weight_decay.head: must be 0 or a positive number, got -1",
        ),
        (
            None,
            &["optim.max_grad_norm=-1"],
            "config optim.max_grad_norm: must be 0 or a positive number",
        ),
        (
            None,
            &["steps"],
            "config steps: an override is written section.key=value",
        ),
    ];
    for (edit, overrides, message) in cases {
        let edit = |toml: String| match edit {
            Some((from, to)) => toml.replace(from, to),
            None => toml,
        };
        let err = load(dir.path(), edit, overrides).unwrap_err();
        assert!(err.contains(message), "expected `{message}` in: {err}");
    }
    let err = TrainConfig::load(&ConfigSource::File("/nonexistent/run.toml".into()), &[])
        .unwrap_err()
        .to_string();
    assert_eq!(err, "config /nonexistent/run.toml: config file not found");
}

/// Shape keys replace the named size's values, one by one; the rest stays the size's.
fn shape_keys_replace_the_sizes_values() {
    let dir = tempfile::tempdir().unwrap();
    let config = load(
        dir.path(),
        |t| t,
        &[
            "model.n_layer=3",
            "model.n_head=4",
            "model.d_model=48",
            "model.max_seq_len=96",
            "model.logit_softcap=15",
            "model.rope_base=500",
        ],
    )
    .unwrap();
    let gpt = record_shape(&config);
    let expected = brainfloat_gpt::GptConfig::new(gpt.vocab_size, 3, 4, 48, 96)
        .with_logit_softcap(15.0)
        .with_rope_base(500.0);
    assert_eq!(gpt, expected);
    assert_eq!(gpt.head_dim(), 12);
    let width_only = load(dir.path(), |t| t, &["model.d_model=128"]).unwrap();
    let gpt = record_shape(&width_only);
    let tiny = brainfloat_gpt::GptConfig::tiny();
    assert_eq!(
        (gpt.n_layer, gpt.n_head, gpt.d_model, gpt.max_seq_len),
        (tiny.n_layer, tiny.n_head, 128, tiny.max_seq_len)
    );
    // GPT-2 from the same size, with its own keys; each architecture refuses the other's.
    let gpt2 = load(
        dir.path(),
        |t| t,
        &["model.arch=gpt2", "model.d_mlp=100", "model.gelu=erf"],
    )
    .unwrap();
    let ModelShape::Gpt2(shape) = gpt2.shape().clone() else {
        panic!("model.arch=gpt2 builds GPT-2");
    };
    let expected = brainfloat_gpt::Gpt2Config::new(shape.vocab_size, 2, 2, 64, 64)
        .with_d_mlp(Some(100))
        .with_gelu(brainfloat_gpt::Gelu::Erf);
    assert_eq!(shape, expected);
    // The section is read into its shape at once: each error names the key at fault.
    for (overrides, message) in [
        (
            &["model.arch=gpt2", "model.rope_base=500"][..],
            "config model.rope_base: belongs to the record architecture, and model.arch is `gpt2`",
        ),
        (
            &["model.layer_norm_eps=1e-6"][..],
            "config model.layer_norm_eps: belongs to the gpt2 architecture, and model.arch is \
             `record`",
        ),
        (
            &["model.arch=llama"][..],
            "config model.arch: unknown architecture `llama` (valid: record, gpt2)",
        ),
        (
            &["model.n_head=3"][..],
            "config model.d_model: d_model 64 is not divisible by n_head 3",
        ),
        (
            &["model.gelu=relu", "model.arch=gpt2"][..],
            "config model.gelu: unknown GELU `relu` (valid: tanh, erf)",
        ),
    ] {
        let err = load(dir.path(), |t| t, overrides).unwrap_err();
        assert_eq!(err, message, "{overrides:?}");
    }
}

/// The record's shape of `config`.
fn record_shape(config: &TrainConfig) -> brainfloat_gpt::GptConfig {
    match config.shape() {
        ModelShape::Record(shape) => shape.clone(),
        other => panic!("the record's architecture, not {other:?}"),
    }
}

fn environment_then_command_line_override_the_file() {
    let dir = tempfile::tempdir().unwrap();
    // SAFETY: this test binary has this one test, so nothing reads the environment meanwhile.
    unsafe { std::env::set_var("BRAINFLOAT__TRAIN__STEPS", "9") };
    let config = load(dir.path(), |t| t, &[]).unwrap();
    assert_eq!(config.train.steps, 9);
    let config = load(dir.path(), |t| t, &["train.steps=5", "eval.every=2"]).unwrap();
    assert_eq!((config.train.steps, config.eval.every), (5, 2));
    unsafe { std::env::remove_var("BRAINFLOAT__TRAIN__STEPS") };
}
