//! The libtorch route the environment names (`BRAINFLOAT_TCH_ROUTE`) is checked before any
//! command runs: a name it does not know is a one-line refusal, not a silent automatic route.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_brainfloat");

/// `plot` of a run that does not exist under the route `route`: exit code and stderr.
fn plot_under(route: &str) -> (Option<i32>, String) {
    let output = Command::new(BIN)
        .env(brainfloat_ops::ROUTE_VAR, route)
        .args(["plot", "--out", "unused.svg", "no-such-run"])
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn an_unknown_libtorch_route_is_refused_in_one_line() {
    let (code, stderr) = plot_under("gpu");
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(
        stderr.trim(),
        "error: BRAINFLOAT_TCH_ROUTE=\"gpu\": expected `auto`, `device` or `composed`"
    );
    // A known route goes on to the command (here: its own refusal of the missing run).
    let (_, stderr) = plot_under("composed");
    assert!(!stderr.contains("BRAINFLOAT_TCH_ROUTE"), "{stderr}");
}
