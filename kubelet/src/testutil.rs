//! Helpers of the unit tests.

use k8s_openapi::api::core::v1::Pod;

use crate::sources::{load_manifest, Source};

/// A static pod "p" with this restart policy and init and app containers (image `i:1`).
pub(crate) fn pod(policy: &str, inits: &[&str], apps: &[&str]) -> Pod {
    let list = |names: &[&str]| {
        names
            .iter()
            .map(|n| format!("{{name: {n}, image: 'i:1'}}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let text = format!(
        "kind: Pod\nmetadata: {{name: p}}\nspec:\n  restartPolicy: {policy}\n  initContainers: [{}]\n  containers: [{}]\n",
        list(inits),
        list(apps)
    );
    load_manifest(&text, Source::File, "/m/p.yaml", "n")
        .0
        .remove(0)
}
