//! Builds the no_std loader (`restore/`, its own workspace with its own profile) and
//! embeds it in the `ckpt` binary, so that an installed `ckpt` is self-contained.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let restore = manifest_dir.join("restore");
    for p in ["src", "Cargo.toml", "build.rs", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", restore.join(p).display());
    }
    // The plan crate is built into the loader too.
    for p in ["plan/src", "plan/Cargo.toml"] {
        println!("cargo:rerun-if-changed={}", manifest_dir.join(p).display());
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let target_dir = out.join("loader-target");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--release", "--manifest-path"])
        .arg(restore.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir);
    // The outer build's flags and wrappers (clippy, coverage...) are not for the loader.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_PROFILE_RELEASE_PANIC",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().expect("running cargo for the loader");
    assert!(status.success(), "building the loader (restore/) failed");
    let bin = target_dir.join("release").join("ckpt-restore");
    assert!(bin.exists(), "loader binary missing at {}", bin.display());
    println!("cargo:rustc-env=CKPT_LOADER_PATH={}", bin.display());
}
