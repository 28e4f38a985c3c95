fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=agent.proto");
    println!("cargo:rerun-if-changed=controlplane.proto");
    tonic_prost_build::configure().compile_protos(&["agent.proto", "controlplane.proto"], &["."])?;
    Ok(())
}
