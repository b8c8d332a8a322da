//! `metrics.jsonl` (and TensorBoard's event files): one line per step and per evaluation,
//! appended; a torn last line, from a run killed mid-write, is cut before appending and left out
//! when read.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::tensorboard::EventWriter;
use super::{Action, EvalStats, MemoryReading, Plugin, SampleStats, StepStats};
use crate::error::TrainError;
use crate::optim::ParamGroup;

/// One JSON line per step (`step`, `loss`, `lr`, `step_time_ms`, `tokens_per_sec`,
/// `grad_norm`, `sync_ms` of the gradient all-reduce; `skipped` on dropped steps; `lost_updates`
/// per group on probed steps; `heap_peak_bytes` and `rss_bytes` when the binary measures them,
/// [`MetricsPlugin::with_memory`]) and per evaluation (`step`, `val_loss`), appended to a file;
/// with [`MetricsPlugin::with_tensorboard`] the same values in TensorBoard's event files too.
pub struct MetricsPlugin {
    path: PathBuf,
    out: Option<BufWriter<File>>,
    read_memory: Option<Box<dyn FnMut() -> MemoryReading>>,
    tensorboard: Option<(PathBuf, Option<EventWriter>)>,
}

impl MetricsPlugin {
    /// Appends to `path` (created if missing, so a resumed run continues the same file).
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            out: None,
            read_memory: None,
            tensorboard: None,
        }
    }

    /// Also writes every line's figures into a TensorBoard event file in `dir` (a new file per
    /// run, as TensorBoard expects): each number under its key (`loss`, `val_loss`, `lr`,
    /// `tokens_per_sec`, `grad_norm`, `heap_peak_bytes`, …; a per-group figure as
    /// `lost_updates/matrices`), samples as text.
    pub fn with_tensorboard(mut self, dir: PathBuf) -> Self {
        self.tensorboard = Some((dir, None));
        self
    }

    /// Adds the memory `read_memory` returns, called once after each step, to each step's line.
    pub fn with_memory(mut self, read_memory: impl FnMut() -> MemoryReading + 'static) -> Self {
        self.read_memory = Some(Box::new(read_memory));
        self
    }

    fn write(&mut self, line: &MetricsLine) -> Result<(), TrainError> {
        let error = |err: std::io::Error| TrainError::Output {
            path: self.path.clone(),
            problem: format!("cannot write metrics: {err}"),
        };
        let out = match &mut self.out {
            Some(out) => out,
            None => {
                let file = OpenOptions::new()
                    .create(true)
                    .read(true)
                    .append(true)
                    .open(&self.path)
                    .map_err(error)?;
                drop_torn_line(&file, &self.path).map_err(error)?;
                self.out.insert(BufWriter::new(file))
            }
        };
        let text = serde_json::to_string(line).expect("a metrics line serializes");
        writeln!(out, "{text}")
            .and_then(|_| out.flush())
            .map_err(error)?;
        if let Some((dir, events)) = &mut self.tensorboard {
            let error = |err: std::io::Error| TrainError::Output {
                path: dir.clone(),
                problem: format!("cannot write TensorBoard events: {err}"),
            };
            let events = match events {
                Some(events) => events,
                None => events.insert(EventWriter::create(dir).map_err(error)?),
            };
            let value = serde_json::to_value(line).expect("a metrics line serializes");
            write_events(events, line.step, &value).map_err(error)?;
        }
        Ok(())
    }
}

/// The figures of one metrics line (its JSON object) as TensorBoard scalars and text.
fn write_events(
    events: &mut EventWriter,
    step: usize,
    line: &serde_json::Value,
) -> std::io::Result<()> {
    use serde_json::Value;
    let mut scalars = Vec::new();
    for (key, value) in line.as_object().into_iter().flatten() {
        match value {
            Value::Number(number) if key != "step" => {
                scalars.extend(number.as_f64().map(|v| (key.clone(), v)));
            }
            Value::Object(groups) => {
                for (group, value) in groups {
                    if let Some(v) = value.as_f64() {
                        scalars.push((format!("{key}/{group}"), v));
                    }
                }
            }
            Value::String(text) => events.text(step, key, text)?,
            _ => {}
        }
    }
    events.scalars(step, &scalars)
}

/// Cuts a last line that a killed writer left without its newline, so that the lines appended
/// now do not continue it.
fn drop_torn_line(file: &File, path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(());
    }
    // Back from the end, a block at a time, to the last newline.
    let mut end = len;
    let mut block = vec![0u8; 4096];
    while end > 0 {
        let start = end.saturating_sub(block.len() as u64);
        let chunk = &mut block[..(end - start) as usize];
        file.read_exact_at(chunk, start)?;
        if let Some(newline) = chunk.iter().rposition(|&b| b == b'\n') {
            let keep = start + newline as u64 + 1;
            if keep < len {
                file.set_len(keep)?;
                tracing::warn!(
                    "{}: removed a last line cut short ({} bytes) before appending",
                    path.display(),
                    len - keep
                );
            }
            return Ok(());
        }
        end = start;
    }
    file.set_len(0)
}

impl Plugin for MetricsPlugin {
    fn on_step(&mut self, s: &StepStats) -> Result<Action, TrainError> {
        let memory = self
            .read_memory
            .as_mut()
            .map(|read| read())
            .unwrap_or_default();
        let line = MetricsLine {
            step: s.step,
            loss: Some(s.loss),
            lr: Some(s.lr_multiplier),
            step_time_ms: Some(s.step_time.as_secs_f64() * 1e3),
            tokens_per_sec: Some(s.tokens_per_sec),
            grad_norm: Some(s.grad_norm),
            sync_ms: Some(s.sync_time.as_secs_f64() * 1e3),
            skipped: s.skipped,
            lost_updates: s.lost_updates.map(|probe| per_group(|g| probe.fraction(g))),
            rounded_away_expected: s
                .lost_updates
                .and_then(|probe| any_group(|g| probe.expected_fraction(g))),
            kahan_compensation: s
                .lost_updates
                .and_then(|probe| any_group(|g| probe.compensation_half_ulps(g))),
            heap_peak_bytes: memory.heap_peak_bytes,
            rss_bytes: memory.rss_bytes,
            ..MetricsLine::default()
        };
        self.write(&line)?;
        Ok(Action::Continue)
    }

    fn on_eval(&mut self, e: &EvalStats) -> Result<(), TrainError> {
        self.write(&MetricsLine {
            step: e.step,
            val_loss: Some(e.val_loss),
            val_tokens_per_sec: Some(e.tokens_per_sec),
            ..MetricsLine::default()
        })
    }

    fn on_sample(&mut self, s: &SampleStats) -> Result<(), TrainError> {
        self.write(&MetricsLine {
            step: s.step,
            sample: Some(s.full_text()),
            ..MetricsLine::default()
        })
    }
}

/// One line of `metrics.jsonl`: a training step's figures, or an evaluation's (`val_*`).
/// Written by [`MetricsPlugin`], read by `plot`; a figure a line does not have is left out.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricsLine {
    /// Optimizer steps completed.
    pub step: usize,
    /// Mean training loss of the step over micro-batches and ranks (`null` when not finite).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    /// Learning-rate multiplier of the schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    /// Wall time of the step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_time_ms: Option<f64>,
    /// This rank's tokens per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_sec: Option<f64>,
    /// Global gradient norm (after scaling for accumulation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_norm: Option<f64>,
    /// Time in the gradient all-reduce.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_ms: Option<f64>,
    /// The step's update was dropped for a non-finite loss or gradient.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skipped: bool,
    /// The lost-update probe: per group name, the fraction of non-zero updates lost (`null`:
    /// none was non-zero).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost_updates: Option<BTreeMap<String, Option<f64>>>,
    /// Under stochastic rounding, on probed steps: per group name, the fraction of non-zero
    /// updates expected to be rounded away (`lost_updates` is the fraction that was).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rounded_away_expected: Option<BTreeMap<String, Option<f64>>>,
    /// Under Kahan, on probed steps: per group name, the mean |compensation| in half bf16 ulps
    /// of its weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kahan_compensation: Option<BTreeMap<String, Option<f64>>>,
    /// Peak heap bytes since the previous step (binaries that count their heap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heap_peak_bytes: Option<u64>,
    /// Resident set size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_bytes: Option<u64>,
    /// Validation loss.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f64>,
    /// Validation tokens per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_tokens_per_sec: Option<f64>,
    /// A sample of text (prompt and continuation), on the steps `eval.sample_every` names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample: Option<String>,
}

/// A value per parameter group, by group name.
fn per_group(value: impl Fn(ParamGroup) -> Option<f64>) -> BTreeMap<String, Option<f64>> {
    ParamGroup::ALL
        .iter()
        .map(|g| (g.name().to_string(), value(*g)))
        .collect()
}

/// [`per_group`], or `None` when no group has a value (a figure of another rounding).
fn any_group(value: impl Fn(ParamGroup) -> Option<f64>) -> Option<BTreeMap<String, Option<f64>>> {
    let values = per_group(value);
    values.values().any(Option::is_some).then_some(values)
}

impl MetricsLine {
    /// Every line of the metrics file `path`; an error names the file and the line. A last
    /// line without its newline that does not parse was cut short by a killed writer: it is
    /// left out, with a warning.
    pub fn read_all(path: &Path) -> Result<Vec<Self>, TrainError> {
        let error = |problem: String| TrainError::Output {
            path: path.to_path_buf(),
            problem,
        };
        let text = std::fs::read_to_string(path)
            .map_err(|err| error(format!("cannot read metrics: {err}")))?;
        let complete = text.rfind('\n').map_or("", |end| &text[..=end]);
        let torn = &text[complete.len()..];
        let mut lines: Vec<Self> = complete
            .lines()
            .enumerate()
            .map(|(number, line)| {
                serde_json::from_str(line)
                    .map_err(|err| error(format!("metrics line {}: {err}", number + 1)))
            })
            .collect::<Result<_, _>>()?;
        match serde_json::from_str(torn) {
            Ok(line) => lines.push(line),
            Err(_) if !torn.trim().is_empty() => tracing::warn!(
                "{}: left out its last line, cut short ({} bytes without a newline): its \
                 writer was killed mid-line",
                path.display(),
                torn.len()
            ),
            Err(_) => {}
        }
        Ok(lines)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(step: usize) -> EvalStats {
        EvalStats {
            step,
            val_loss: 1.5,
            tokens: 64,
            tokens_per_sec: 1.0,
        }
    }

    #[test]
    fn a_torn_last_metrics_line_is_left_out_when_read_and_cut_before_appending() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let mut metrics = MetricsPlugin::new(path.clone());
        metrics.on_eval(&eval(1)).unwrap();
        drop(metrics);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("{\"step\": 2, \"val_lo");
        std::fs::write(&path, &text).unwrap();
        assert_eq!(MetricsLine::read_all(&path).unwrap().len(), 1);

        let mut metrics = MetricsPlugin::new(path.clone());
        metrics.on_eval(&eval(2)).unwrap();
        drop(metrics);
        let steps: Vec<usize> = MetricsLine::read_all(&path)
            .unwrap()
            .into_iter()
            .map(|line| line.step)
            .collect();
        assert_eq!(steps, [1, 2]);
        assert!(std::fs::read_to_string(&path).unwrap().ends_with("}\n"));

        // A broken line that is not the last one is still an error naming it.
        std::fs::write(&path, "{\"step\": 1\n{\"step\": 2, \"val_loss\": 1.0}\n").unwrap();
        let err = MetricsLine::read_all(&path).unwrap_err().to_string();
        assert!(err.contains("metrics line 1"), "{err}");
    }
}
