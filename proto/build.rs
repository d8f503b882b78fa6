fn main() {
    println!("cargo:rerun-if-changed=shim.proto");
    let mut config = prost_build::Config::new();
    // The exit record is also a JSON file in the bundle.
    config.message_attribute(".corral.shim.v1.Exit", "#[derive(serde::Serialize, serde::Deserialize)]");
    config.message_attribute(".corral.shim.v1.Exit", "#[serde(default)]");
    if let Err(e) = config.compile_protos(&["shim.proto"], &["."]) {
        eprintln!("compiling shim.proto: {e}");
        std::process::exit(1);
    }
}
