//! Compiles `protos/agent.proto` into rust-protobuf messages and sync ttrpc bindings.
//!
//! The generated files carry inner attributes (`#![allow(...)]`), which `include!` rejects,
//! so they are rewritten without them; `src/lib.rs` wraps each in a module instead.

use std::fs;
use std::path::PathBuf;

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let gen = out.join("gen");
    fs::create_dir_all(&gen).expect("create OUT_DIR/gen");
    println!("cargo:rerun-if-changed=protos/agent.proto");
    ttrpc_codegen::Codegen::new()
        .out_dir(&gen)
        .inputs(["protos/agent.proto"])
        .include("protos")
        .rust_protobuf()
        .customize(ttrpc_codegen::Customize {
            ..Default::default()
        })
        .run()
        .expect("ttrpc codegen of protos/agent.proto");
    for name in ["agent.rs", "agent_ttrpc.rs"] {
        let path = gen.join(name);
        let text = fs::read_to_string(&path).expect("read generated file");
        let cleaned: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("#!") && !l.trim_start().starts_with("//!"))
            .map(|l| format!("{l}\n"))
            .collect();
        fs::write(&path, cleaned).expect("write cleaned generated file");
    }
}
