//! torch-sys links libtorch but embeds no rpath; without one the `shardrec` binary and the
//! test binary cannot find `libtorch_cpu.so` at run time. torch-sys exports its library
//! folder as `DEP_TCH_LIBTORCH_LIB` to crates that depend on it directly.
fn main() {
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
}
