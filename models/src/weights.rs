//! Loading weights from safetensors files into a model's VarStore, with a report of every mismatch.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use tch::{nn, Tensor};

use crate::error::Mismatch;
use crate::{Error, Result};

/// How strictly a weights file must match the model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HeadPolicy {
    /// Every parameter must be present with the same shape.
    #[default]
    Strict,
    /// Parameters under `head.` may be missing or differ in shape (a checkpoint trained on other classes):
    /// those keep their fresh initialisation and are listed in the report.
    ReinitialiseHead,
}

/// What a load did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct LoadReport {
    pub loaded: usize,
    /// Head parameters left at their initialisation under [`HeadPolicy::ReinitialiseHead`].
    pub reinitialised: Vec<String>,
    /// File tensors ignored because they start with an ignored prefix.
    pub ignored: usize,
}

/// Reads all tensors of a safetensors file.
pub fn read_safetensors(path: &Path) -> Result<Vec<(String, Tensor)>> {
    if !path.is_file() {
        return Err(Error::WeightsFile { path: path.to_path_buf(), reason: "no such file".into() });
    }
    Tensor::read_safetensors(path).map_err(|e| Error::WeightsFile {
        path: path.to_path_buf(),
        reason: format!("not a readable safetensors file: {e}"),
    })
}

/// Copies `tensors` into the variables of `vs` by name, converting dtype and device.
/// Tensors whose name starts with one of `ignore_prefixes` are skipped. Nothing is copied unless the whole
/// file matches (under `policy`): a mismatch is an error listing the first differing keys.
pub fn load_into(
    vs: &nn::VarStore,
    tensors: Vec<(String, Tensor)>,
    source: &Path,
    policy: HeadPolicy,
    ignore_prefixes: &[&str],
) -> Result<LoadReport> {
    let mut report = LoadReport::default();
    let mut file: BTreeMap<String, Tensor> = BTreeMap::new();
    for (name, tensor) in tensors {
        if ignore_prefixes.iter().any(|p| name.starts_with(p)) {
            report.ignored += 1;
        } else {
            file.insert(name, tensor);
        }
    }
    let variables: HashMap<String, Tensor> = vs.variables();
    let mut names: Vec<&String> = variables.keys().collect();
    names.sort();

    let is_head = |name: &str| name.starts_with("head.");
    let tolerated = |name: &str| policy == HeadPolicy::ReinitialiseHead && is_head(name);
    let mut mismatch = Mismatch::default();
    let mut plan = Vec::new();
    for name in names {
        let var = &variables[name];
        match file.get(name.as_str()) {
            None if tolerated(name) => report.reinitialised.push(name.clone()),
            None => mismatch.missing.push(name.clone()),
            Some(src) if src.size() != var.size() => {
                if tolerated(name) {
                    report.reinitialised.push(name.clone());
                } else {
                    mismatch.shapes.push((name.clone(), var.size(), src.size()));
                }
            }
            Some(src) => plan.push((var, src)),
        }
    }
    mismatch.unexpected =
        file.keys().filter(|k| !variables.contains_key(k.as_str()) && !tolerated(k)).cloned().collect();
    if !mismatch.is_empty() {
        return Err(Error::WeightsMismatch { path: source.to_path_buf(), mismatch });
    }
    tch::no_grad(|| -> Result<()> {
        for (var, src) in &plan {
            let mut var = var.shallow_clone();
            var.f_copy_(&src.to_kind(var.kind()).to_device(var.device()))?;
        }
        Ok(())
    })?;
    report.loaded = plan.len();
    Ok(report)
}

/// Reads a safetensors file and loads it into `vs` (see [`load_into`]).
pub fn load_safetensors(vs: &nn::VarStore, path: &Path, policy: HeadPolicy) -> Result<LoadReport> {
    load_into(vs, read_safetensors(path)?, path, policy, &[])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classifier::{ClassifierConfig, ImageClassifier};
    use tch::{Device, Kind};

    fn model(vs: &nn::VarStore, classes: i64) -> ImageClassifier {
        ImageClassifier::new(&vs.root(), &ClassifierConfig::new("convnext_atto", classes)).unwrap()
    }

    #[test]
    fn round_trip_restores_every_parameter() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let a = nn::VarStore::new(Device::Cpu);
        model(&a, 3);
        let named: Vec<(String, Tensor)> = a.variables().into_iter().collect();
        Tensor::write_safetensors(&named, &path).unwrap();
        let b = nn::VarStore::new(Device::Cpu);
        model(&b, 3);
        let report = load_safetensors(&b, &path, HeadPolicy::Strict).unwrap();
        assert_eq!(report.loaded, a.variables().len());
        let bv = b.variables();
        for (name, t) in a.variables() {
            assert!(t.equal(&bv[&name]), "{name}");
        }
    }

    #[test]
    fn mismatches_are_listed_and_nothing_is_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let a = nn::VarStore::new(Device::Cpu);
        model(&a, 3);
        let mut named: Vec<(String, Tensor)> = a.variables().into_iter().filter(|(n, _)| n != "stem.0.bias").collect();
        named.push(("extra.weight".into(), Tensor::zeros([2], (Kind::Float, Device::Cpu))));
        Tensor::write_safetensors(&named, &path).unwrap();

        let b = nn::VarStore::new(Device::Cpu);
        model(&b, 5);
        let before = b.variables()["stem.0.weight"].copy();
        let err = load_safetensors(&b, &path, HeadPolicy::Strict).unwrap_err().to_string();
        assert!(err.contains("stem.0.bias") && err.contains("extra.weight") && err.contains("head.fc.weight"), "{err}");
        assert!(err.contains("[5, 320]") && err.contains("[3, 320]"), "{err}");
        assert!(b.variables()["stem.0.weight"].equal(&before), "a failed load must not change the model");
    }

    #[test]
    fn head_policy_keeps_a_fresh_head_for_other_classes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let a = nn::VarStore::new(Device::Cpu);
        model(&a, 1000);
        let named: Vec<(String, Tensor)> = a.variables().into_iter().collect();
        Tensor::write_safetensors(&named, &path).unwrap();
        let b = nn::VarStore::new(Device::Cpu);
        model(&b, 4);
        let report = load_safetensors(&b, &path, HeadPolicy::ReinitialiseHead).unwrap();
        assert_eq!(report.reinitialised, vec!["head.fc.bias".to_string(), "head.fc.weight".to_string()]);
        assert!(a.variables()["stages.3.blocks.1.gamma"].equal(&b.variables()["stages.3.blocks.1.gamma"]));
    }

    #[test]
    fn a_file_that_is_not_safetensors_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("junk.safetensors");
        std::fs::write(&path, b"not a tensor file").unwrap();
        let err = read_safetensors(&path).unwrap_err().to_string();
        assert!(err.contains("junk.safetensors"), "{err}");
    }
}
