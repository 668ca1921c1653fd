//! Freezing the input side of an encoder: a fraction of its units (stem, downsamplers, blocks, in forward order)
//! stops training; every other parameter trains.

use tch::nn;

use crate::optim::Param;

/// Freezes the first `fraction` of `units` (parameter-path prefixes) and returns the parameters left to train,
/// by name. Buffers (variables created without a gradient, e.g. BatchNorm's running statistics) are never
/// parameters.
pub fn trainable_params(vs: &nn::VarStore, units: &[String], fraction: f64) -> Vec<Param> {
    let frozen = ((units.len() as f64) * fraction).round() as usize;
    let frozen_prefixes = &units[..frozen.min(units.len())];
    let mut vars: Vec<(String, tch::Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars.into_iter()
        .filter_map(|(name, tensor)| {
            if !tensor.requires_grad() {
                None
            } else if frozen_prefixes.iter().any(|p| name.starts_with(p.as_str())) {
                let _ = tensor.set_requires_grad(false);
                None
            } else {
                Some(Param::new(name, tensor))
            }
        })
        .collect()
}
