//! Exponential moving average of model weights (timm's `ModelEmaV3`): `ema = d·ema + (1 - d)·w` after every
//! optimiser step, with the decay warmed up as `d = min(decay, (1 + n) / (10 + n))`.

use tch::{nn, Tensor};

use crate::Result;

/// The averaged copy of a model's variables, by name.
pub struct Ema {
    pub decay: f64,
    pub updates: i64,
    /// (name, model variable, averaged copy).
    pairs: Vec<(String, Tensor, Tensor)>,
}

impl Ema {
    /// Starts the average at the model's current weights.
    pub fn new(vs: &nn::VarStore, decay: f64) -> Self {
        let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let pairs = vars
            .into_iter()
            .map(|(name, var)| {
                let copy = tch::no_grad(|| var.detach().copy());
                (name, var, copy)
            })
            .collect();
        Self { decay, updates: 0, pairs }
    }

    /// The decay used at the next update.
    pub fn current_decay(&self) -> f64 {
        let n = self.updates as f64;
        self.decay.min((1.0 + n) / (10.0 + n))
    }

    pub fn update(&mut self) {
        let d = self.current_decay();
        tch::no_grad(|| {
            for (_, var, avg) in &mut self.pairs {
                *avg *= d;
                *avg += var.detach() * (1.0 - d);
            }
        });
        self.updates += 1;
    }

    /// The averaged weights by name.
    pub fn named(&self) -> Vec<(String, Tensor)> {
        self.pairs.iter().map(|(n, _, avg)| (n.clone(), avg.shallow_clone())).collect()
    }

    /// Replaces the average with saved weights (a resumed run).
    pub fn load(&mut self, named: &std::collections::HashMap<String, Tensor>) -> Result<()> {
        tch::no_grad(|| -> Result<()> {
            for (name, _, avg) in &mut self.pairs {
                if let Some(saved) = named.get(name.as_str()) {
                    avg.f_copy_(saved)?;
                }
            }
            Ok(())
        })
    }

    /// Swaps the model's weights and the averaged ones (call again to swap back).
    pub fn swap(&mut self) {
        tch::no_grad(|| {
            for (_, var, avg) in &mut self.pairs {
                let tmp = var.detach().copy();
                var.detach().copy_(avg);
                avg.copy_(&tmp);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn averages_with_warmed_up_decay_and_swaps() {
        let vs = nn::VarStore::new(Device::Cpu);
        let w = vs.root().var("w", &[1], nn::Init::Const(0.0));
        let mut ema = Ema::new(&vs, 0.5);
        assert!((ema.current_decay() - 0.1).abs() < 1e-12, "(1 + 0) / (10 + 0)");
        let _ = tch::no_grad(|| w.detach().fill_(1.0));
        ema.update(); // 0.1 * 0 + 0.9 * 1
        ema.update(); // d = min(0.5, 2/11): 0.1818 * 0.9 + 0.8182 * 1
        let avg = ema.named()[0].1.double_value(&[0]);
        assert!((avg - (2.0 / 11.0 * 0.9 + 9.0 / 11.0)).abs() < 1e-6, "{avg}");
        ema.swap();
        assert!((w.double_value(&[0]) - avg).abs() < 1e-6);
        ema.swap();
        assert_eq!(w.to_kind(Kind::Double).double_value(&[0]), 1.0);
    }
}
