//! Compiles the public contract in `proto/` with the pure-Rust `protox`
//! compiler, so building Broadside needs no system `protoc`.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/broadside/v1/campaign.proto",
        "proto/broadside/v1/dispatch.proto",
        // Only for reflection: lets clients decode INVALID_ARGUMENT details.
        "proto/google/rpc/error_details.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }

    let descriptors = protox::compile(protos, ["proto"])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let descriptor_path = out_dir.join("broadside_descriptor.bin");
    std::fs::write(
        &descriptor_path,
        prost::Message::encode_to_vec(&descriptors),
    )?;

    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
