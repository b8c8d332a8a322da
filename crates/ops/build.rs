//! With the `tch` feature: compiles `csrc/` (the libtorch operators tch does not bind, and the
//! traffic ledger) against the headers of the libtorch that torch-sys links, as torch-sys
//! compiles its own shim.

use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=csrc");
    if std::env::var_os("CARGO_FEATURE_TCH").is_none() {
        return;
    }
    // torch-sys (`links = "tch"`) hands its libtorch's `lib` folder to its dependents.
    let lib = PathBuf::from(
        std::env::var("DEP_TCH_LIBTORCH_LIB").expect("torch-sys names its libtorch's lib folder"),
    );
    let root = lib.parent().expect("libtorch's lib folder has a parent");
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(root.join("include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={}", cxx11_abi(root)))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        // As libtorch's release build: its headers' debug-only checks assume its debug build
        // (`RecordFunction::inputs` asserts a flag only that build sets).
        .define("NDEBUG", None)
        .files(["csrc/fused.cpp", "csrc/ledger.cpp"])
        .compile("brainfloat_torch_shim");
}

/// The C++ ABI libtorch was built with: `LIBTORCH_CXX11_ABI` (as for torch-sys), else what an
/// older CMake configuration records (`-D_GLIBCXX_USE_CXX11_ABI=N`), else the new ABI, which
/// every PyPI wheel since PyTorch 2.7 uses (2.9 and 2.11 compile the shim with it).
fn cxx11_abi(root: &Path) -> String {
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    if let Ok(abi) = std::env::var("LIBTORCH_CXX11_ABI") {
        return abi;
    }
    let config = root.join("share/cmake/Torch/TorchConfig.cmake");
    std::fs::read_to_string(config)
        .ok()
        .and_then(|text| {
            let at = text.find("_GLIBCXX_USE_CXX11_ABI=")? + "_GLIBCXX_USE_CXX11_ABI=".len();
            text.get(at..at + 1).map(str::to_string)
        })
        .unwrap_or_else(|| "1".to_string())
}
