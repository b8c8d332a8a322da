//! What brainfloat's tests share, kept out of the libraries' public APIs: the backend and device
//! of the suite (`BRAINFLOAT_BACKEND`, default flex), which panic, as a test should, when the
//! variable names a backend the test binary was not built with.
//!
//! Depends only on `brainfloat-backend`, so that every crate can take it as a dev-dependency
//! without a cycle.

use brainfloat_backend::{BACKEND_VAR, Backend};
use burn::tensor::Device;

/// The device of the test suite's backend ([`BACKEND_VAR`], default flex).
///
/// # Panics
/// When the variable names an unknown backend or one this binary was not built with.
pub fn test_device() -> Device {
    test_backend()
        .device()
        .unwrap_or_else(|err| panic!("{BACKEND_VAR}: {err}"))
}

/// The test suite's backend ([`BACKEND_VAR`], default flex).
///
/// # Panics
/// When the variable names an unknown backend.
pub fn test_backend() -> Backend {
    Backend::from_env().unwrap_or_else(|err| panic!("{BACKEND_VAR}: {err}"))
}
