//! Evaluation and samples during training: the validation loss over every rank's slice, and
//! rank 0's text from the run's prompt.

use super::*;

/// The tokenizer and the tokenized prompt of the samples during training.
pub(super) struct SamplePrompt {
    tokenizer: Box<dyn Tokenizer + Send + Sync>,
    prompt: Vec<u32>,
}

impl SamplePrompt {
    /// The config's sample prompt, checked against the model as generation will check it.
    pub(super) fn new(config: &TrainConfig) -> Result<Self, TrainError> {
        let tokenizer = tokenizer_at(config.data.tokenizer.as_deref())?;
        let prompt = tokenizer.encode(&config.eval.sample_prompt);
        first_context(&prompt, config.shape(), tokenizer.document_separator()).map_err(|err| {
            ConfigError {
                key: "eval.sample_prompt".into(),
                problem: err.to_string(),
            }
        })?;
        Ok(Self { tokenizer, prompt })
    }
}

impl<M: LanguageModel> Trainer<M> {
    /// Mean validation loss over `eval.tokens` tokens from the start of the validation shards,
    /// computed without autodiff; each rank reads its slice and the means are averaged.
    pub fn evaluate(&mut self) -> Result<EvalStats, TrainError> {
        let (world, rank) = (self.sync.world_size(), self.sync.rank());
        let started = Instant::now();
        let (local, tokens) = validation_loss_of_rank(
            &self.model.valid(),
            &self.config,
            self.val_paths.clone(),
            &self.device.clone().inner(),
            (rank, world),
            &|| false,
        )?
        .expect("never abandoned");
        Ok(EvalStats {
            step: self.step,
            val_loss: self.sync.mean(local)?,
            tokens: tokens * world,
            tokens_per_sec: tokens as f64 / started.elapsed().as_secs_f64().max(1e-9),
        })
    }

    /// [`evaluate`](Self::evaluate), abandoned (`None`) when a plugin reports a stop request
    /// between two batches, with one rank only.
    fn evaluate_unless_stopped(&mut self) -> Result<Option<EvalStats>, TrainError> {
        let (world, rank) = (self.sync.world_size(), self.sync.rank());
        if world > 1 {
            return self.evaluate().map(Some);
        }
        let started = Instant::now();
        let plugins = &self.plugins;
        let Some((local, tokens)) = validation_loss_of_rank(
            &self.model.valid(),
            &self.config,
            self.val_paths.clone(),
            &self.device.clone().inner(),
            (rank, world),
            &|| plugins.iter().any(|p| p.stop_requested()),
        )?
        else {
            return Ok(None);
        };
        Ok(Some(EvalStats {
            step: self.step,
            val_loss: local,
            tokens,
            tokens_per_sec: tokens as f64 / started.elapsed().as_secs_f64().max(1e-9),
        }))
    }

    /// Evaluates, tells the plugins, and samples when due; `false` when a stop request
    /// abandoned the evaluation (one rank alone: under several, the step's stop flag is shared
    /// before evaluation starts, so that no rank leaves the others in a collective).
    pub(super) fn evaluate_and_report(&mut self) -> Result<bool, TrainError> {
        let Some(eval) = self.evaluate_unless_stopped()? else {
            tracing::warn!(step = self.step, "evaluation abandoned on a stop request");
            return Ok(false);
        };
        self.last_val_loss = Some(eval.val_loss);
        self.each(|p| p.on_eval(&eval))?;
        let every = self.config.eval.sample_every;
        let last = self.step == self.config.train.steps;
        if every > 0
            && (last || self.step.is_multiple_of(every))
            && let Some(sample) = self.sample()?
        {
            self.each(|p| p.on_sample(&sample))?;
        }
        Ok(true)
    }

    /// A sample of `eval.sample_tokens` tokens after `eval.sample_prompt` from the model as it
    /// is now (rank 0; `None` elsewhere and when samples are off).
    pub fn sample(&mut self) -> Result<Option<SampleStats>, TrainError> {
        let Some(samples) = &self.samples else {
            return Ok(None);
        };
        let options = GenerateOptions {
            max_tokens: self.config.eval.sample_tokens,
            sampling: Sampling {
                temperature: SAMPLE_TEMPERATURE,
                top_k: Some(SAMPLE_TOP_K),
                top_p: None,
                seed: self.config.train.seed,
            },
            stop_at_end_of_text: true,
            kv_cache: true,
        };
        let device = self.device.clone().inner();
        let model = inference_model(self.model.valid(), &device)?;
        let generation = generate(
            &model,
            samples.tokenizer.as_ref(),
            &samples.prompt,
            &options,
            &device,
            |_| {},
        )?;
        Ok(Some(SampleStats {
            step: self.step,
            prompt: self.config.eval.sample_prompt.clone(),
            tokens: generation.tokens.len(),
            tokens_per_sec: generation.tokens_per_sec(),
            text: generation.text,
        }))
    }
}

/// Mean loss of `model` over `config.eval.tokens` tokens read from the start of `val_paths` in
/// the config's micro-batches (at least one), and the tokens read. Mean of per-batch means, as
/// the reference computes it.
pub fn validation_loss(
    model: &impl LanguageModel,
    config: &TrainConfig,
    val_paths: Vec<PathBuf>,
    device: &Device,
) -> Result<(f64, usize), TrainError> {
    validation_loss_of_rank(model, config, val_paths, device, (0, 1), &|| false)
        .map(|loss| loss.expect("never abandoned"))
}

/// [`validation_loss`] of rank `rank` of `world` ranks: the rank's slice of the same
/// `eval.tokens` tokens (the ranks' means average to the one-rank figure).
fn validation_loss_of_rank(
    model: &impl LanguageModel,
    config: &TrainConfig,
    val_paths: Vec<PathBuf>,
    device: &Device,
    (rank, world): (usize, usize),
    abandon: &dyn Fn() -> bool,
) -> Result<Option<(f64, usize)>, TrainError> {
    let (micro, seq_len) = (config.micro_batch_size(), config.train.seq_len);
    let mut loader = DistributedLoader::new(val_paths, micro, seq_len, rank, world)?
        .with_vocab(config.shape().vocab_size())?;
    let batches = (config.eval.tokens / (world * micro * seq_len)).max(1);
    let cache = model.cache(device);
    let mut total = 0.0;
    for _ in 0..batches {
        if abandon() {
            return Ok(None);
        }
        let batch = Batch::from_window(&loader.next_window()?, micro, seq_len, device)?;
        total += model.forward(&batch, &cache)?.into_scalar::<f32>() as f64;
    }
    Ok(Some((total / batches as f64, batches * micro * seq_len)))
}
