//! What the ops' test files share.

use brainfloat_backend::Backend;
use brainfloat_ops::{LibTorchRoute, with_libtorch_route};
use brainfloat_test_support::test_backend;

/// `check` on every route of the backend under test (libtorch's CPU kernels and its device
/// route forced on the CPU; flex has one), each named in the output.
pub fn on_each_route(check: impl Fn()) {
    let routes: &[LibTorchRoute] = match test_backend() {
        Backend::Tch | Backend::TchCuda(_) => &[LibTorchRoute::Auto, LibTorchRoute::Device],
        _ => &[LibTorchRoute::Auto],
    };
    for route in routes {
        println!("route: {}", route.name());
        with_libtorch_route(*route, &check);
    }
}
