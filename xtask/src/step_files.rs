//! `cargo xtask step-files`: the workspace files whose code one steady training step runs,
//! counted by a machine instead of by hand.
//!
//! The binary is built with line tables (`--profile profiling`) and trains three steps of the
//! embedded tiny config under Callgrind, which records every instruction executed, in every
//! thread, with the source file it was compiled from (an inlined function keeps its own file).
//! A profile is cut at each entry of `Trainer::train_step` (`#[inline(never)]`, so that it has
//! one) and of a plugin's `on_step`; the part that starts at the last step's entry and ends at
//! the first plugin is that step alone. A file counts when an instruction of that part came from a line written in it; code the compiler
//! generates — at no line (line 0), at a `#[derive(..)]` (an enum's `==`), at the
//! `#[global_allocator]` static (the allocator's entry points) — is listed apart, under the
//! file it is attributed to. The batch is cut to two sequences of 16 tokens (and the final
//! evaluation to one batch, without a sample) so that the run takes minutes under Callgrind;
//! the files a step runs do not depend on the batch's size.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{cargo_command, status};

/// Where the build, the run and the profile go.
const WORK_DIR: &str = "target/step-files";

/// The functions at whose entry Callgrind cuts the profile: the step, and the plugins that the
/// run loop calls right after it.
const STEP_ENTRY: &str = "*Trainer*train_step*";
const AFTER_STEP: &str = "*on_step*";

/// The crate below the count: what the issue asks about is the code above the kernels.
const KERNELS: &str = "crates/kernels/";

/// Instructions a file ran in the step, and its functions that ran the most.
#[derive(Default)]
struct FileCost {
    /// Instructions from lines written in the file.
    written: u64,
    /// Instructions the compiler generated and attributed to the file.
    generated: u64,
    functions: BTreeMap<String, u64>,
}

/// Whether line `line` (from 1; 0 is none) of a source file holds compiler-generated code
/// rather than code written there.
fn is_generated(lines: &[String], line: usize) -> bool {
    let text = |n: usize| lines.get(n.wrapping_sub(1)).map_or("", |l| l.trim());
    line == 0 || text(line).starts_with("#[derive(") || text(line - 1) == "#[global_allocator]"
}

/// Builds, profiles and prints the table (also written to `--out FILE` when given; `--reuse`
/// reads the last run's profile again instead); other arguments (`--precision fp32`,
/// `--set …`) go to `brainfloat train`.
pub fn step_files(args: &[String]) -> Result<bool, String> {
    let root =
        std::env::current_dir().map_err(|err| format!("cannot tell the current folder: {err}"))?;
    let work = root.join(WORK_DIR);
    let options = Options::parse(args)?;
    if !options.reuse && !profile(&root, &work, &options.train_args)? {
        return Ok(false);
    }
    let part = last_step_part(&work)?;
    let costs = file_costs(&part, &root)?;
    let report = format!("{}{}", header(args), render(&costs));
    print!("{report}");
    if let Some(out) = options.out {
        write_atomically(&out, &report)?;
    }
    Ok(true)
}

/// `text` into `path` whole or not at all: written beside it, then renamed over it.
fn write_atomically(path: &Path, text: &str) -> Result<(), String> {
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    std::fs::write(&partial, text)
        .and_then(|()| std::fs::rename(&partial, path))
        .map_err(|err| format!("cannot write {}: {err}", path.display()))
}

/// The binary built with line tables and three steps trained under Callgrind, its profile
/// written to `work`; whether both succeeded.
fn profile(root: &Path, work: &Path, train_args: &[String]) -> Result<bool, String> {
    if Command::new("valgrind").arg("--version").output().is_err() {
        return Err("step-files needs valgrind (Debian: apt-get install valgrind)".into());
    }
    let mut build = cargo_command();
    build.args([
        "build",
        "--profile",
        "profiling",
        "--package",
        "brainfloat-cli",
    ]);
    if !status(build.args(["--bin", "brainfloat"])) {
        return Ok(false);
    }
    if work.exists() {
        std::fs::remove_dir_all(work).map_err(|err| format!("cannot clear {WORK_DIR}: {err}"))?;
    }
    std::fs::create_dir_all(work).map_err(|err| format!("cannot create {WORK_DIR}: {err}"))?;
    let mut run = Command::new("valgrind");
    run.args([
        "--tool=callgrind",
        &format!("--dump-before={STEP_ENTRY}"),
        &format!("--dump-before={AFTER_STEP}"),
        "--compress-strings=no",
        "--compress-pos=no",
    ])
    .arg(format!(
        "--callgrind-out-file={}",
        work.join("callgrind.out").display()
    ))
    .arg(target_dir(root).join("profiling").join("brainfloat"))
    .args([
        "train",
        "--set",
        "train.steps=3",
        "--set",
        "train.warmdown_steps=1",
    ])
    .args(["--set", "train.batch_size=2", "--set", "train.seq_len=16"])
    .args(["--set", "eval.tokens=32", "--set", "eval.sample_every=0"])
    .args(["--set", "output.progress=false", "--set"])
    .arg(format!("output.dir={}", work.join("run").display()))
    .args(train_args);
    eprintln!("profiling three steps under Callgrind (a few minutes)…");
    Ok(status(&mut run))
}

/// `step-files`' own options, and the arguments for `brainfloat train`.
struct Options {
    out: Option<PathBuf>,
    reuse: bool,
    train_args: Vec<String>,
}

impl Options {
    fn parse(args: &[String]) -> Result<Self, String> {
        let mut options = Options {
            out: None,
            reuse: false,
            train_args: Vec::new(),
        };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--out" => match args.next() {
                    Some(path) => options.out = Some(PathBuf::from(path)),
                    None => return Err("--out needs a file to write the table to".into()),
                },
                "--reuse" => options.reuse = true,
                _ => options.train_args.push(arg.clone()),
            }
        }
        Ok(options)
    }
}

/// What the tables are of: the command, the commit and the CPU.
fn header(args: &[String]) -> String {
    let output = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .output()
            .ok()
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let commit = output("git", &["rev-parse", "--short", "HEAD"]);
    let dirty = !output("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            let line = info.lines().find(|l| l.starts_with("model name"))?;
            Some(line.split(':').nth(1)?.trim().to_string())
        })
        .unwrap_or_else(|| "an unknown CPU".into());
    format!(
        "# The files one steady training step runs\n\n\
         `cargo xtask step-files {}` at `{commit}`{} on {cpu}, flex (under Callgrind the \
         kernels take their AVX2 path: Valgrind has no AVX-512). How it counts: \
         `docs/architecture.md`, \"The files one step opens\". The instructions are one step's, \
         of 2 × 16 tokens, under Callgrind: they say where a step's work is, not how long it \
         takes.\n\n",
        (args.iter().filter(|arg| *arg != "--reuse"))
            .cloned()
            .collect::<Vec<_>>()
            .join(" "),
        if dirty { " (with changes)" } else { "" },
    )
}

/// Cargo's build folder: `CARGO_TARGET_DIR` where set, else `target` in the workspace.
fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from)
}

/// The profile part of the run's last step (of the parts in `work`, in the order written).
fn last_step_part(work: &Path) -> Result<String, String> {
    let mut parts = Vec::new();
    for number in 1.. {
        let path = work.join(format!("callgrind.out.{number}"));
        let Ok(text) = std::fs::read_to_string(&path) else {
            break;
        };
        parts.push(text);
    }
    step_part(parts)
}

/// Of `parts`, the last one cut at a plugin's `on_step` right after one cut at `train_step`
/// (each part is named for the cut that ends it).
fn step_part(mut parts: Vec<String>) -> Result<String, String> {
    let ends_at = |text: &str, function: &str| {
        text.lines()
            .take_while(|line| !line.starts_with("fl=") && !line.starts_with("ob="))
            .any(|line| line.starts_with("desc: Trigger:") && line.contains(function))
    };
    if !parts.iter().any(|part| ends_at(part, "train_step")) {
        return Err(
            "Callgrind never cut the profile at `Trainer::train_step`'s entry: the \
                    function was inlined into its caller (it is `#[inline(never)]` so that it \
                    keeps one), or training never started"
                .into(),
        );
    }
    let step = (1..parts.len())
        .rev()
        .find(|&i| ends_at(&parts[i - 1], "train_step") && ends_at(&parts[i], "on_step"))
        .ok_or("no part of the profile spans one step (did training run three steps?)")?;
    Ok(parts.swap_remove(step))
}

/// Instructions per workspace file (paths relative to `root`) in one Callgrind part: each cost
/// line counts for the file of the code it describes (`fl=` a function's file, `fi=`/`fe=` an
/// inlined function's).
fn file_costs(part: &str, root: &Path) -> Result<BTreeMap<String, FileCost>, String> {
    let prefix = format!("{}/", root.display());
    let crate_folders = crate_folders(root);
    let mut costs: BTreeMap<String, FileCost> = BTreeMap::new();
    let mut sources: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let (mut function_file, mut file, mut function) = (String::new(), String::new(), String::new());
    let mut after_calls = false;
    for line in part.lines() {
        if let Some(path) = line.strip_prefix("fl=") {
            function_file = path.to_string();
            file = function_file.clone();
        } else if let Some(path) = line
            .strip_prefix("fi=")
            .or_else(|| line.strip_prefix("fe="))
        {
            file = path.to_string();
        } else if let Some(name) = line.strip_prefix("fn=") {
            function = name.to_string();
            file = function_file.clone();
        } else if line.starts_with("calls=") {
            after_calls = true;
        } else if line.starts_with(|c: char| c.is_ascii_digit()) {
            // A call's line holds the callee's inclusive cost: the callee's own lines count it.
            if std::mem::take(&mut after_calls) {
                continue;
            }
            let Some(relative) = file.strip_prefix(&prefix) else {
                // Cargo names a workspace crate's build by its name, not its folder: a target
                // folder two checkouts share can link one's crates into the other's binary.
                if crate_folders
                    .iter()
                    .any(|folder| file.contains(folder.as_str()))
                {
                    return Err(format!(
                        "the binary holds code built from another checkout ({file}); \
                         run `cargo clean --profile profiling` and try again"
                    ));
                }
                continue;
            };
            if !relative.starts_with("crates/") {
                continue;
            }
            let mut fields = line.split_whitespace().map(str::parse::<u64>);
            let (Some(Ok(source_line)), Some(Ok(instructions))) = (fields.next(), fields.next())
            else {
                return Err(format!("not a cost line: {line}"));
            };
            let lines = sources.entry(relative.to_string()).or_insert_with(|| {
                let text = std::fs::read_to_string(&file).unwrap_or_default();
                text.lines().map(str::to_string).collect()
            });
            let cost = costs.entry(relative.to_string()).or_default();
            if is_generated(lines, source_line as usize) {
                cost.generated += instructions;
            } else {
                cost.written += instructions;
                *cost.functions.entry(function.clone()).or_default() += instructions;
            }
        }
    }
    Ok(costs)
}

/// The source folders of the workspace's crates as any checkout holds them
/// (`/crates/<name>/src/`): a file outside `root` in one is another checkout's.
fn crate_folders(root: &Path) -> Vec<String> {
    let Ok(crates) = std::fs::read_dir(root.join("crates")) else {
        return Vec::new();
    };
    (crates.flatten())
        .map(|entry| format!("/crates/{}/src/", entry.file_name().to_string_lossy()))
        .collect()
}

/// The files as Markdown tables: those whose written code ran, above the kernels and in them,
/// then those that ran only generated code.
fn render(costs: &BTreeMap<String, FileCost>) -> String {
    let written: Vec<_> = costs.iter().filter(|(_, cost)| cost.written > 0).collect();
    let (kernels, above): (Vec<_>, Vec<_>) = written
        .iter()
        .partition(|(path, _)| path.starts_with(KERNELS));
    let mut text = format!(
        "**{} files above `{KERNELS}`** run code written in them in one steady step (and {} \
         files in it):\n\n",
        above.len(),
        kernels.len()
    );
    text.push_str("| # | file | instructions | the functions that ran most of them |\n");
    text.push_str("|---:|---|---:|---|\n");
    for (index, (path, cost)) in above.iter().chain(&kernels).enumerate() {
        let mut functions: Vec<_> = cost.functions.iter().collect();
        functions.sort_by(|a, b| b.1.cmp(a.1));
        let names: Vec<String> = (functions.iter().take(3))
            .map(|(name, _)| format!("`{}`", short_name(name)))
            .collect();
        text.push_str(&format!(
            "| {} | `{path}` | {} | {} |\n",
            index + 1,
            cost.written,
            names.join(", ")
        ));
    }
    let generated: Vec<_> = costs.iter().filter(|(_, cost)| cost.written == 0).collect();
    if !generated.is_empty() {
        text.push_str("\nFiles that ran only code the compiler generated (not counted):\n\n");
        text.push_str("| file | instructions |\n|---|---:|\n");
        for (path, cost) in generated {
            text.push_str(&format!("| `{path}` | {} |\n", cost.generated));
        }
    }
    text
}

/// A function's name without its crate path and generic arguments: `Trainer::train_step`.
fn short_name(name: &str) -> String {
    let mut plain = String::new();
    let mut depth = 0usize;
    for c in name.chars() {
        match c {
            '<' => depth += 1,
            '>' => depth = depth.saturating_sub(1),
            _ if depth == 0 => plain.push(c),
            _ => {}
        }
    }
    let segments: Vec<&str> = plain.split("::").filter(|s| !s.is_empty()).collect();
    segments[segments.len().saturating_sub(2)..].join("::")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Callgrind part as the run writes it (names and positions uncompressed): a function of
    /// one file with code inlined from another, a call line (the callee's inclusive cost), and
    /// a derived `==`.
    fn part(root: &Path, source: &Path) -> String {
        let (root, source) = (root.display(), source.display());
        format!(
            "desc: Trigger: --dump-before=<a::Plugin>::on_step\n\
             fl={source}\nfn=a::Trainer::train_step\n3 10\n\
             fi={root}/crates/ops/src/lib.rs\n40 5\n\
             fe={source}\n4 1\ncfl=/usr/lib/libc.so\ncfn=memcpy\ncalls=1 0\n4 999\n\
             fl={root}/crates/gpt/src/enums.rs\nfn=<a::Arch as PartialEq>::eq\n1 7\n\
             fl=/rustc/library/core/src/ptr.rs\nfn=core::ptr::drop\n9 100\n"
        )
    }

    #[test]
    fn costs_count_each_line_in_its_own_file_and_set_generated_code_apart() {
        let root = std::env::temp_dir().join(format!("step-files-{}", std::process::id()));
        let source = root.join("crates/trainer/src/step.rs");
        std::fs::create_dir_all(source.parent().unwrap()).unwrap();
        std::fs::create_dir_all(root.join("crates/gpt/src")).unwrap();
        std::fs::write(&source, "fn a() {\n}\nlet x = 1;\nlet y = 2;\n").unwrap();
        std::fs::write(
            root.join("crates/gpt/src/enums.rs"),
            "#[derive(PartialEq)]\n",
        )
        .unwrap();
        let costs = file_costs(&part(&root, &source), &root).unwrap();
        std::fs::remove_dir_all(&root).unwrap();

        let step = &costs["crates/trainer/src/step.rs"];
        assert_eq!(
            (step.written, step.generated),
            (11, 0),
            "the call's 999 is memcpy's"
        );
        assert_eq!(
            costs["crates/ops/src/lib.rs"].written, 5,
            "inlined code keeps its file"
        );
        let derived = &costs["crates/gpt/src/enums.rs"];
        assert_eq!((derived.written, derived.generated), (0, 7));
        assert_eq!(
            costs.len(),
            3,
            "files outside the workspace are not counted"
        );

        let table = render(&costs);
        assert!(
            table.starts_with("**2 files above `crates/kernels/`**"),
            "{table}"
        );
        assert!(
            table.contains("| `crates/gpt/src/enums.rs` | 7 |"),
            "{table}"
        );
    }

    #[test]
    fn a_crate_of_another_checkout_is_refused() {
        let root = std::env::temp_dir().join(format!("step-files-other-{}", std::process::id()));
        std::fs::create_dir_all(root.join("crates/ops/src")).unwrap();
        let other = "fl=/elsewhere/crates/ops/src/lib.rs\nfn=ops::matmul\n3 10\n";
        let std_lib = "fl=/rustc/library/stdarch/crates/core_arch/src/x86.rs\nfn=f\n3 10\n";
        let refused = file_costs(other, &root).map(|_| ());
        let allowed = file_costs(std_lib, &root).map(|costs| costs.len());
        std::fs::remove_dir_all(&root).unwrap();
        assert!(refused.unwrap_err().contains("another checkout"));
        assert_eq!(allowed, Ok(0));
    }

    #[test]
    fn generated_lines_are_line_zero_derives_and_the_global_allocator() {
        let lines: Vec<String> = [
            "#[derive(Debug)]",
            "#[global_allocator]",
            "static A: X = X;",
            "f();",
        ]
        .map(String::from)
        .to_vec();
        let generated: Vec<bool> = (0..=4).map(|n| is_generated(&lines, n)).collect();
        assert_eq!(generated, [true, true, false, true, false]);
    }

    #[test]
    fn the_step_is_the_last_part_from_train_step_to_a_plugin() {
        let cut_at = |function: &str, body: &str| {
            format!("desc: Trigger: --dump-before=a::{function}\nfl=step.rs\n{body}\n")
        };
        let parts = vec![
            cut_at("Trainer::train_step", "start-up"),
            cut_at("Log::on_step", "step 1"),
            cut_at("Trainer::train_step", "plugins 1"),
            cut_at("Log::on_step", "step 2"),
            cut_at("Trainer::train_step", "plugins 2"),
        ];
        assert_eq!(step_part(parts.clone()).unwrap(), parts[3]);
        // An inlined `train_step` leaves no cut at its entry: said, not taken for a short run.
        let inlined: Vec<String> = parts
            .iter()
            .map(|part| part.replace("Trainer::train_step", "Trainer::run"))
            .collect();
        assert!(step_part(inlined).unwrap_err().contains("inlined"));
        let short = parts[..1].to_vec();
        assert!(step_part(short).unwrap_err().contains("three steps"));
    }

    #[test]
    fn options_take_their_own_flags_and_pass_the_rest_to_train() {
        let args = |list: &[&str]| list.iter().map(|a| a.to_string()).collect::<Vec<_>>();
        let options =
            Options::parse(&args(&["--precision", "fp32", "--out", "t.md", "--reuse"])).unwrap();
        assert_eq!(options.out, Some(PathBuf::from("t.md")));
        assert!(options.reuse);
        assert_eq!(options.train_args, args(&["--precision", "fp32"]));
        let missing = Options::parse(&args(&["--out"])).err().unwrap();
        assert!(missing.contains("--out needs a file"), "{missing}");
    }

    #[test]
    fn the_table_is_written_whole() {
        let folder = std::env::temp_dir().join(format!("step-files-out-{}", std::process::id()));
        std::fs::create_dir_all(&folder).unwrap();
        let out = folder.join("table.md");
        std::fs::write(&out, "old").unwrap();
        write_atomically(&out, "new").unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "new");
        let names: Vec<_> = std::fs::read_dir(&folder).unwrap().flatten().collect();
        assert_eq!(names.len(), 1, "no partial file left beside the table");
        let unwritable = folder.join("missing").join("table.md");
        assert!(
            write_atomically(&unwritable, "x")
                .unwrap_err()
                .contains("cannot write")
        );
        std::fs::remove_dir_all(&folder).unwrap();
    }

    #[test]
    fn names_lose_their_paths_and_generic_arguments() {
        let name = "<brainfloat_ops::flex::Flex as brainfloat_ops::KernelBackend<T>>::axpby";
        assert_eq!(short_name(name), "axpby");
        assert_eq!(
            short_name("brainfloat_trainer::trainer::Trainer<M>::train_step"),
            "Trainer::train_step"
        );
    }
}
