//! Which implementation a libtorch tensor's ops take: brainfloat's kernels on libtorch's CPU
//! buffers, or the device route (libtorch's own fused operators, what a GPU runs). The device
//! route is chosen for every tensor off the CPU; [`ROUTE_VAR`]` = device` (or
//! [`with_libtorch_route`] on one thread) forces it on the CPU too, so that the tests run the
//! GPU's code on libtorch's CPU twins of its operators; `composed` forces the composed ops
//! everywhere (what a GPU ran before the device route: the baseline of the traffic ledger).

use std::cell::Cell;
use std::sync::OnceLock;

/// The environment variable that picks the libtorch route: `auto` (the default), `device` or
/// `composed`.
pub const ROUTE_VAR: &str = "BRAINFLOAT_TCH_ROUTE";

/// The implementation libtorch's tensors take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LibTorchRoute {
    /// brainfloat's kernels on CPU tensors, the device route elsewhere.
    Auto,
    /// libtorch's fused operators on every device, the CPU included.
    Device,
    /// The composed ops (Burn's ops on libtorch, the extension's default bodies) on every
    /// device, where neither brainfloat's kernels nor the device route run.
    Composed,
}

impl LibTorchRoute {
    /// The route [`ROUTE_VAR`] names (`auto` when unset).
    ///
    /// # Errors
    /// When the variable holds anything but `auto`, `device` or `composed`.
    pub fn from_env() -> Result<Self, String> {
        match std::env::var(ROUTE_VAR) {
            Err(_) => Ok(Self::Auto),
            Ok(value) => match value.to_ascii_lowercase().as_str() {
                "" | "auto" => Ok(Self::Auto),
                "device" => Ok(Self::Device),
                "composed" => Ok(Self::Composed),
                _ => Err(format!(
                    "{ROUTE_VAR}={value:?}: expected `auto`, `device` or `composed`"
                )),
            },
        }
    }

    /// The name [`ROUTE_VAR`] takes.
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Device => "device",
            Self::Composed => "composed",
        }
    }
}

thread_local! {
    static OVERRIDE: Cell<Option<LibTorchRoute>> = const { Cell::new(None) };
}

/// The route this thread takes: [`with_libtorch_route`]'s inside one, else the process's
/// ([`ROUTE_VAR`], read once; a value it does not know counts as `auto`, which the command line
/// refuses at start-up through [`LibTorchRoute::from_env`]).
pub fn libtorch_route() -> LibTorchRoute {
    static PROCESS: OnceLock<LibTorchRoute> = OnceLock::new();
    OVERRIDE.with(Cell::get).unwrap_or_else(|| {
        *PROCESS.get_or_init(|| LibTorchRoute::from_env().unwrap_or(LibTorchRoute::Auto))
    })
}

/// `run()` with this thread's libtorch ops on `route` (Burn's libtorch backend runs them on the
/// calling thread).
pub fn with_libtorch_route<R>(route: LibTorchRoute, run: impl FnOnce() -> R) -> R {
    struct Restore(Option<LibTorchRoute>);
    impl Drop for Restore {
        fn drop(&mut self) {
            OVERRIDE.with(|cell| cell.set(self.0));
        }
    }
    let _restore = Restore(OVERRIDE.with(|cell| cell.replace(Some(route))));
    run()
}
