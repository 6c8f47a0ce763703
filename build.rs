//! Generates the protocol types from `proto/qualcache.proto` with protox (a
//! pure-Rust protobuf compiler), so building needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/qualcache.proto");
    let fds = protox::compile(["qualcache.proto"], ["proto"])?;
    prost_build::Config::new()
        // `qualcache query` prints responses as JSON.
        .type_attribute(".", "#[derive(serde::Serialize)]")
        .compile_fds(fds)?;
    Ok(())
}
