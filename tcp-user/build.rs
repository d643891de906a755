//! Embeds the XDP object into the `tcp-user` binary, so one file is all a
//! deployment needs. `cargo xtask build` builds the object first and points
//! TCP_EBPF_OBJ at it; without it the default build location is tried, and
//! when nothing is there an empty placeholder is embedded and `tcp-user run`
//! says how to build the object.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=TCP_EBPF_OBJ");
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let src = std::env::var_os("TCP_EBPF_OBJ")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("../target/bpfel-unknown-none/release/tcp-ebpf"));
    println!("cargo:rerun-if-changed={}", src.display());
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("tcp-ebpf.o");
    let bytes = std::fs::read(&src).unwrap_or_default();
    std::fs::write(&out, bytes).expect("writing OUT_DIR/tcp-ebpf.o");
}
