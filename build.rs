//! With the `cuda` feature: compiles `src/ops/cuda/kernels.cu` to PTX for `CUDA_COMPUTE_CAP`
//! (default 90, H100/H200) with the toolkit's nvcc (`$CUDA_HOME/bin`, `$CUDA_PATH/bin` or
//! `PATH`), into `OUT_DIR`, where `src/ops/cuda/mod.rs` includes it. Without the feature it does
//! nothing, so a CPU build needs no CUDA toolkit.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=src/ops/cuda/kernels.cu");
    println!("cargo::rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo::rerun-if-env-changed=CUDA_HOME");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let ptx = out.join("cifar_stream_kernels.ptx");
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into());
    let cap: String = cap.chars().filter(char::is_ascii_digit).collect();
    let nvcc = ["CUDA_HOME", "CUDA_PATH"]
        .iter()
        .filter_map(std::env::var_os)
        .map(|home| PathBuf::from(home).join("bin/nvcc"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("nvcc"));
    let status = Command::new(&nvcc)
        .args(["--ptx", "-O3", "-std=c++17"])
        .arg(format!("-arch=compute_{cap}"))
        .arg("-o")
        .arg(&ptx)
        .arg("src/ops/cuda/kernels.cu")
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!(
            "{} failed ({s}) compiling src/ops/cuda/kernels.cu",
            nvcc.display()
        ),
        Err(e) => panic!(
            "the cuda feature needs nvcc ({}: {e}); set CUDA_HOME or use tools/cuda-build.sh",
            nvcc.display()
        ),
    }
}
