//! Compiles the kernels' host twin (`csrc/host_twin.cpp`: their per-element arithmetic on the
//! CPU) with the system's C++ compiler, as written and, with `testing`, deliberately wrong.

fn main() {
    println!("cargo:rerun-if-changed=csrc");
    let twin = |define_wrong: bool, name: &str| {
        let mut build = cc::Build::new();
        build
            .cpp(true)
            .std("c++17")
            .file("csrc/host_twin.cpp")
            // Rust rounds `a·y + b·x` twice; a contracted multiply-add would round once.
            .flag_if_supported("-ffp-contract=off");
        if define_wrong {
            build.define("BF_DELIBERATELY_WRONG", None);
        }
        build.compile(name);
    };
    twin(false, "brainfloat_host_twin");
    if std::env::var_os("CARGO_FEATURE_TESTING").is_some() {
        twin(true, "brainfloat_host_twin_wrong");
    }
}
