//! corral-cni entry point: environment and stdin in, result or error JSON out.
#![deny(unsafe_code)]

use std::io::{Read, Write};

use cni::config::Env;

fn main() {
    // Hidden internal commands: DEL's detached teardown (see cni::teardown).
    match std::env::args().nth(1).as_deref() {
        Some(cni::teardown::DETACH_ARG) => std::process::exit(cni::teardown::detach_main()),
        Some(cni::teardown::WORK_ARG) => std::process::exit(cni::teardown::work_main()),
        _ => {}
    }
    let vars = std::env::vars().collect();
    let env = Env::from_map(&vars);
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    let outcome = match read {
        Ok(_) => cni::run(&env, &stdin),
        Err(e) => Err((
            cni::spec::CniError::new(cni::spec::code::IO, format!("reading stdin: {e}")),
            cni::spec::LATEST.to_string(),
        )),
    };
    let mut out = std::io::stdout().lock();
    match outcome {
        Ok(Some(v)) => {
            let _ = writeln!(out, "{v}");
        }
        Ok(None) => {}
        Err((e, version)) => {
            let _ = writeln!(out, "{}", e.to_json(&version));
            let _ = out.flush();
            std::process::exit(1);
        }
    }
}
