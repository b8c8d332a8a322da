//! With the `tch` feature: compiles `csrc/` (the libtorch operators tch does not bind, and the
//! traffic ledger) against the headers of the libtorch that torch-sys links, as torch-sys
//! compiles its own shim.

use std::path::PathBuf;

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
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={}", cxx11_abi()))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        // As libtorch's release build: its headers' debug-only checks assume its debug build
        // (`RecordFunction::inputs` asserts a flag only that build sets).
        .define("NDEBUG", None)
        .files(["csrc/fused.cpp", "csrc/ledger.cpp"])
        .compile("brainfloat_torch_shim");
}

/// The C++ ABI libtorch was built with: `LIBTORCH_CXX11_ABI` (as for torch-sys), else the new
/// ABI, which every PyPI wheel and libtorch archive since PyTorch 2.7 uses.
fn cxx11_abi() -> String {
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".to_string())
}
