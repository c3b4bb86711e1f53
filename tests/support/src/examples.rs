//! The ModelDeployments in `examples/`, as a user would apply them, for
//! tests that hold the examples to the CRD and to the inference server's
//! flags.

use std::path::PathBuf;

/// Every ModelDeployment document of every `examples/*.yaml`, with the
/// file it came from, sorted by file.
pub fn model_deployments() -> Vec<(String, serde_json::Value)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut found = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).expect("an example");
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        for document in serde_yaml::Deserializer::from_str(&text) {
            let value: serde_json::Value =
                serde::Deserialize::deserialize(document).unwrap_or_else(|e| panic!("{name}: {e}"));
            if value["kind"] == "ModelDeployment" {
                found.push((name.clone(), value));
            }
        }
    }
    found
}
