//! Compiles the steering program with clang for the BPF target; the object is
//! embedded in the loader with `include_bytes_aligned!`.

use std::{env, path::PathBuf, process::Command};

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".to_owned());
    // <asm/types.h>, included by the uapi headers, lives under the host's multiarch directory.
    let arch = env::var("CARGO_CFG_TARGET_ARCH").expect("cargo sets the target arch");
    let multiarch = format!("/usr/include/{arch}-linux-gnu");

    for file in ["bpf/rialto.bpf.c", "bpf/rialto.h"] {
        println!("cargo:rerun-if-changed={file}");
    }
    println!("cargo:rerun-if-env-changed=CLANG");

    let status = Command::new(&clang)
        .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
        .arg(format!("-I{multiarch}"))
        .args(["-c", "bpf/rialto.bpf.c", "-o"])
        .arg(out.join("rialto.bpf.o"))
        .status()
        .unwrap_or_else(|e| {
            panic!("cannot run {clang} ({e}): run ./setup.sh, or apt-get install clang libbpf-dev")
        });
    assert!(
        status.success(),
        "{clang} failed to compile bpf/rialto.bpf.c"
    );
}
