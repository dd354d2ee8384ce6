//! Compiles `proto/etcd/rpc.proto` (a minimal subset of etcd's v3 API, for the
//! `bench-raft` baseline) with protox (pure Rust, no system `protoc`) and generates the
//! tonic client code, as `proto/build.rs` does for slipway's own protos.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["etcd/rpc.proto"];
    for file in &files {
        println!("cargo:rerun-if-changed=proto/{file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure().build_server(false).compile_fds(descriptors)?;
    Ok(())
}
