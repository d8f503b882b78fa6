#![no_main]

// The network config as corrald reads it, and as corral-cni reads it on stdin.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    agent::fuzzing::cni_config(data);
    let _ = cni::config::NetConf::parse(data);
});
