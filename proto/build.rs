//! Compiles `slipway/v1/*.proto` with protox (pure Rust, no system `protoc`) and
//! generates the tonic client and server code.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "slipway/v1/types.proto",
        "slipway/v1/agent.proto",
        "slipway/v1/control.proto",
        "slipway/v1/raft.proto",
        "slipway/v1/enroll.proto",
    ];
    for file in &files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["."])?;
    // A registry login is a secret: its Debug (src/lib.rs) leaves the password out.
    tonic_prost_build::configure().skip_debug(["slipway.v1.RegistryLogin"]).compile_fds(descriptors)?;
    Ok(())
}
