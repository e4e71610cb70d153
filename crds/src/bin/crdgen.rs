//! Prints the StreamPipeline CustomResourceDefinition as YAML:
//! `cargo run -p sluice-crds --bin crdgen > crds/streampipeline.yaml`.

fn main() -> Result<(), serde_yaml::Error> {
    print!("{}", sluice_crds::crd_yaml()?);
    Ok(())
}
