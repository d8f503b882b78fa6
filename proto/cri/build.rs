use std::path::PathBuf;
use std::{env, fs, process};

fn fail(what: &str, e: impl std::fmt::Display) -> ! {
    eprintln!("{what}: {e}");
    process::exit(1);
}

fn main() {
    println!("cargo:rerun-if-changed=api.proto");
    // api.proto keeps upstream's `[debug_redact = true]` on AuthConfig's secrets, but the protoc
    // of Debian 12 (3.21) predates that option and rejects it. prost ignores it anyway, so compile
    // a copy without it: the generated code is the same.
    let out = match env::var_os("OUT_DIR") {
        Some(d) => PathBuf::from(d),
        None => fail("build script", "OUT_DIR is not set"),
    };
    let text = fs::read_to_string("api.proto").unwrap_or_else(|e| fail("reading api.proto", e));
    let copy = out.join("api.proto");
    fs::write(&copy, text.replace(" [debug_redact = true]", ""))
        .unwrap_or_else(|e| fail(&format!("writing {}", copy.display()), e));
    if let Err(e) = tonic_prost_build::configure().compile_protos(&[&copy], &[&out]) {
        fail("compiling api.proto", e);
    }
}
