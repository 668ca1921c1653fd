//! AdamW, Adam and SGD with momentum, written over tch tensors so their state can be saved and restored exactly.
//!
//! Updates follow PyTorch's `torch.optim.AdamW`, `torch.optim.Adam` (L2 weight decay added to the gradient, no
//! AMSGrad) and `torch.optim.SGD` (dampening 0, no Nesterov). Biases,
//! norm weights and layer scales (every parameter with fewer than two dimensions) get no weight decay, as in timm.

use std::collections::HashMap;

use tch::{Kind, Tensor};

use crate::config::OptimizerKind;
use crate::{Error, Result};

/// One trainable parameter.
pub struct Param {
    pub name: String,
    pub tensor: Tensor,
    pub weight_decay: bool,
}

impl Param {
    /// A parameter with timm's decay rule: decay weights of two or more dimensions only.
    pub fn new(name: String, tensor: Tensor) -> Self {
        let weight_decay = tensor.dim() >= 2;
        Self { name, tensor, weight_decay }
    }
}

/// Hyperparameters of an optimiser.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OptimizerConfig {
    pub kind: OptimizerKind,
    pub weight_decay: f64,
    pub momentum: f64,
    pub betas: (f64, f64),
    pub eps: f64,
}

/// An optimiser over a fixed list of parameters, with per-parameter state buffers.
pub struct Optimizer {
    config: OptimizerConfig,
    params: Vec<Param>,
    /// Adam(W): first moments; SGD: momentum buffers.
    first: Vec<Tensor>,
    /// Adam(W): second moments; unused by SGD.
    second: Vec<Tensor>,
    /// One buffer as large as the largest parameter, for the intermediates of every update.
    scratch: Scratch,
    step: i64,
}

/// A flat buffer per (kind, device) that any parameter's intermediates fit in, viewed in the parameter's shape.
struct Scratch {
    buffers: Vec<Tensor>,
}

impl Scratch {
    fn new(params: &[Param]) -> Self {
        let mut buffers: Vec<Tensor> = Vec::new();
        for p in params {
            let (kind, device, numel) = (p.tensor.kind(), p.tensor.device(), p.tensor.numel() as i64);
            match buffers.iter_mut().find(|b| b.kind() == kind && b.device() == device) {
                Some(b) if b.numel() as i64 >= numel => {}
                Some(b) => *b = Tensor::empty([numel], (kind, device)),
                None => buffers.push(Tensor::empty([numel], (kind, device))),
            }
        }
        Self { buffers }
    }

    /// A view of the buffer in `like`'s shape and kind (contents undefined).
    fn scratch_like(&self, like: &Tensor) -> Tensor {
        let buffer = self
            .buffers
            .iter()
            .find(|b| b.kind() == like.kind() && b.device() == like.device())
            .expect("Scratch::new saw every parameter's kind and device");
        let view = buffer.narrow(0, 0, like.numel() as i64).view(like.size().as_slice());
        if like.is_contiguous() {
            view
        } else {
            // A channels-last (or otherwise strided) parameter: give the scratch the same strides.
            buffer.narrow(0, 0, like.numel() as i64).as_strided(like.size().as_slice(), like.stride().as_slice(), None)
        }
    }
}

impl Optimizer {
    pub fn new(params: Vec<Param>, config: OptimizerConfig) -> Self {
        let zeros = |p: &Param| p.tensor.zeros_like().set_requires_grad(false);
        let first = params.iter().map(zeros).collect();
        let second = match config.kind {
            OptimizerKind::AdamW | OptimizerKind::Adam => params.iter().map(zeros).collect(),
            OptimizerKind::Sgd => Vec::new(),
        };
        let scratch = Scratch::new(&params);
        Self { config, params, first, second, scratch, step: 0 }
    }

    /// Steps taken so far.
    pub fn steps(&self) -> i64 {
        self.step
    }

    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// Drops every gradient (PyTorch's default `set_to_none=True`): backward then writes fresh gradients instead of
    /// zero-filling and accumulating into the old ones.
    pub fn zero_grad(&mut self) {
        for p in &self.params {
            crate::native::clear_grad(&p.tensor);
        }
    }

    /// The global L2 norm of all gradients.
    pub fn grad_norm(&self) -> f64 {
        tch::no_grad(|| {
            let squares: Vec<Tensor> = self
                .params
                .iter()
                .filter(|p| p.tensor.grad().defined())
                .map(|p| p.tensor.grad().to_kind(Kind::Float).square().sum(Kind::Float))
                .collect();
            if squares.is_empty() {
                return 0.0;
            }
            Tensor::stack(&squares, 0).sum(Kind::Float).sqrt().double_value(&[])
        })
    }

    /// Multiplies every gradient by `factor` (gradient clipping, loss-scale removal).
    pub fn scale_grads(&mut self, factor: f64) {
        tch::no_grad(|| {
            for p in &self.params {
                let mut grad = p.tensor.grad();
                if grad.defined() {
                    grad *= factor;
                }
            }
        });
    }

    /// Clips the global gradient norm to `max_norm`; returns the norm before clipping.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> f64 {
        let norm = self.grad_norm();
        if norm > max_norm {
            self.scale_grads(max_norm / (norm + 1e-6));
        }
        norm
    }

    /// One update with learning rate `lr`. Parameters without a gradient are left alone.
    ///
    /// Every operation is in place on the parameter, its state or one scratch buffer shared by all parameters (as
    /// libtorch's C++ AdamW does), so a step allocates nothing: the formula-by-formula version allocated a
    /// temporary per intermediate of every parameter and was the slowest part of a step at 224 px.
    pub fn step(&mut self, lr: f64) {
        self.step += 1;
        let cfg = self.config;
        let step = self.step;
        tch::no_grad(|| {
            for (i, p) in self.params.iter().enumerate() {
                let mut grad = p.tensor.grad();
                if !grad.defined() {
                    continue;
                }
                let mut param = p.tensor.shallow_clone();
                let mut scratch = self.scratch.scratch_like(&param);
                let decay = if p.weight_decay { cfg.weight_decay } else { 0.0 };
                match cfg.kind {
                    OptimizerKind::AdamW | OptimizerKind::Adam => {
                        let (b1, b2) = cfg.betas;
                        if decay > 0.0 && cfg.kind == OptimizerKind::AdamW {
                            // Decoupled: param *= 1 - lr·decay.
                            let _ = param.g_mul_scalar_(1.0 - lr * decay);
                        } else if decay > 0.0 {
                            // L2: g += decay·param (in place on the gradient, which the next backward replaces).
                            let _ = param.mul_scalar_out(&scratch, decay);
                            let _ = grad.g_add_(&scratch);
                        }
                        let mut m = self.first[i].shallow_clone();
                        let mut v = self.second[i].shallow_clone();
                        // m = b1·m + (1 - b1)·g;  v = b2·v + (1 - b2)·g²
                        let _ = m.lerp_(&grad, 1.0 - b1);
                        let _ = grad.mul_out(&scratch, &grad);
                        let _ = v.lerp_(&scratch, 1.0 - b2);
                        if lr == 0.0 {
                            continue;
                        }
                        let bias1 = 1.0 - b1.powi(step as i32);
                        let bias2 = 1.0 - b2.powi(step as i32);
                        // param -= lr / bias1 · m / (sqrt(v) / sqrt(bias2) + eps), as param += m / denom' with
                        // denom' = (sqrt(v) / sqrt(bias2) + eps) · (-bias1 / lr).
                        let _ = v.sqrt_out(&scratch);
                        let _ = scratch.g_div_scalar_(bias2.sqrt());
                        let _ = scratch.g_add_scalar_(cfg.eps);
                        let _ = scratch.g_mul_scalar_(-bias1 / lr);
                        let _ = param.addcdiv_(&m, &scratch);
                    }
                    OptimizerKind::Sgd => {
                        // d = g + decay·param (into the scratch buffer when decaying)
                        let d = if decay > 0.0 {
                            let _ = param.mul_scalar_out(&scratch, decay);
                            let _ = scratch.g_add_(&grad);
                            scratch.shallow_clone()
                        } else {
                            grad.shallow_clone()
                        };
                        let update = if cfg.momentum > 0.0 {
                            let mut buf = self.first[i].shallow_clone();
                            if step == 1 {
                                buf.copy_(&d);
                            } else {
                                let _ = buf.g_mul_scalar_(cfg.momentum);
                                let _ = buf.g_add_(&d);
                            }
                            buf
                        } else {
                            d
                        };
                        // param -= lr·update, through the scratch buffer (update may be the scratch itself).
                        let _ = update.mul_scalar_out(&scratch, -lr);
                        let _ = param.g_add_(&scratch);
                    }
                }
            }
        });
    }

    /// The state as named tensors (`optimizer.m.<param>`, `optimizer.v.<param>`) and the step count.
    pub fn state(&self) -> (Vec<(String, Tensor)>, i64) {
        let mut named: Vec<(String, Tensor)> = self
            .params
            .iter()
            .zip(&self.first)
            .map(|(p, t)| (format!("optimizer.m.{}", p.name), t.shallow_clone()))
            .collect();
        named.extend(
            self.params.iter().zip(&self.second).map(|(p, t)| (format!("optimizer.v.{}", p.name), t.shallow_clone())),
        );
        (named, self.step)
    }

    /// Restores a state saved by [`Optimizer::state`]; every buffer must be present with the right shape.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, step: i64) -> Result<()> {
        let buffers = self.first.iter_mut().map(|t| ("m", t)).chain(self.second.iter_mut().map(|t| ("v", t)));
        let names = self.params.iter().map(|p| &p.name).cycle();
        for ((which, buffer), name) in buffers.zip(names) {
            let key = format!("optimizer.{which}.{name}");
            let saved = tensors.get(&key).ok_or_else(|| Error::InvalidSetting {
                key: "optimizer state".into(),
                reason: format!("{key} is missing (was the run trained with another optimizer or --freeze?)"),
            })?;
            if saved.size() != buffer.size() {
                return Err(Error::InvalidSetting {
                    key: "optimizer state".into(),
                    reason: format!("{key} has shape {:?}, expected {:?}", saved.size(), buffer.size()),
                });
            }
            tch::no_grad(|| buffer.copy_(saved));
        }
        self.step = step;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn config(kind: OptimizerKind) -> OptimizerConfig {
        OptimizerConfig { kind, weight_decay: 0.1, momentum: 0.9, betas: (0.9, 0.999), eps: 1e-8 }
    }

    fn param(values: &[f32], shape: &[i64]) -> Param {
        Param::new("w".into(), Tensor::from_slice(values).reshape(shape).set_requires_grad(true))
    }

    /// Gradient of sum(w^2) is 2w.
    fn backward(opt: &Optimizer) {
        opt.params()[0].tensor.square().sum(Kind::Float).backward();
    }

    #[test]
    fn adamw_matches_pytorch_by_hand() {
        // torch.optim.AdamW([w], lr=0.1, weight_decay=0.1) on w = [[1, -2]], loss = sum(w^2), two steps:
        // step 1: w *= 0.99 -> [0.99, -1.98]; m = 0.1 g, v = 0.001 g^2; update = lr * sign(g) -> [0.89, -1.88].
        // step 2: g = [1.78, -3.76]; m = 0.09*[2,-4] + 0.1 g; v = 0.999*0.001*[4,16] + 0.001 g^2;
        //         w = w*0.99 - 0.1 * (m / 0.19) / (sqrt(v / 0.001999) + 1e-8) = [0.781572, -1.761409]
        //         (PyTorch 2.11 gives [0.7815719, -1.7614089]).
        let mut opt = Optimizer::new(vec![param(&[1.0, -2.0], &[1, 2])], config(OptimizerKind::AdamW));
        for _ in 0..2 {
            opt.zero_grad();
            backward(&opt);
            opt.step(0.1);
        }
        let w: Vec<f32> = Vec::try_from(opt.params()[0].tensor.flatten(0, -1)).unwrap();
        assert!((w[0] - 0.781_571_9).abs() < 1e-5 && (w[1] + 1.761_408_9).abs() < 1e-5, "{w:?}");
    }

    #[test]
    fn adam_adds_l2_decay_to_the_gradient_as_pytorch_does() {
        // torch.optim.Adam([w], lr=0.1, weight_decay=0.1) on w = [[1, -2]], loss = sum(w^2), two steps: PyTorch
        // 2.11 gives [0.8004122, -1.8001665] (AdamW, decoupled, gives [0.7815719, -1.7614089]).
        let mut opt = Optimizer::new(vec![param(&[1.0, -2.0], &[1, 2])], config(OptimizerKind::Adam));
        for _ in 0..2 {
            opt.zero_grad();
            backward(&opt);
            opt.step(0.1);
        }
        let w: Vec<f32> = Vec::try_from(opt.params()[0].tensor.flatten(0, -1)).unwrap();
        assert!((w[0] - 0.800_412_2).abs() < 1e-5 && (w[1] + 1.800_166_5).abs() < 1e-5, "{w:?}");
    }

    #[test]
    fn sgd_momentum_matches_pytorch_by_hand() {
        // torch.optim.SGD([w], lr=0.1, momentum=0.9, weight_decay=0.1) on a 2-D w = [[1]], loss = w^2:
        // step 1: g = 2 + 0.1 = 2.1, buf = 2.1, w = 1 - 0.21 = 0.79
        // step 2: g = 1.58 + 0.079 = 1.659, buf = 0.9*2.1 + 1.659 = 3.549, w = 0.79 - 0.3549 = 0.4351
        let mut opt = Optimizer::new(vec![param(&[1.0], &[1, 1])], config(OptimizerKind::Sgd));
        for _ in 0..2 {
            opt.zero_grad();
            backward(&opt);
            opt.step(0.1);
        }
        let w = opt.params()[0].tensor.double_value(&[0, 0]);
        assert!((w - 0.4351).abs() < 1e-5, "{w}");
    }

    #[test]
    fn one_dimensional_parameters_get_no_weight_decay() {
        assert!(!param(&[1.0, 2.0], &[2]).weight_decay);
        assert!(param(&[1.0, 2.0], &[1, 2]).weight_decay);
    }

    #[test]
    fn clipping_bounds_the_global_norm() {
        let mut opt = Optimizer::new(vec![param(&[3.0, 4.0], &[2])], config(OptimizerKind::Sgd));
        backward(&opt); // grad [6, 8], norm 10
        assert!((opt.clip_grad_norm(1.0) - 10.0).abs() < 1e-5);
        assert!((opt.grad_norm() - 1.0).abs() < 1e-4);
    }

    /// The update written formula by formula (a temporary per intermediate), as kiln computed it before the
    /// in-place version: the reference the in-place update must agree with.
    fn reference_step(cfg: OptimizerConfig, step: i64, lr: f64, params: &mut [(Tensor, Tensor, Tensor, bool)]) {
        tch::no_grad(|| {
            for (param, m, v, decays) in params.iter_mut() {
                let grad = param.grad();
                let decay = if *decays { cfg.weight_decay } else { 0.0 };
                match cfg.kind {
                    OptimizerKind::AdamW | OptimizerKind::Adam => {
                        let (b1, b2) = cfg.betas;
                        let grad = if cfg.kind == OptimizerKind::Adam {
                            &grad + &*param * decay
                        } else {
                            *param *= 1.0 - lr * decay;
                            grad
                        };
                        *m *= b1;
                        *m += &grad * (1.0 - b1);
                        *v *= b2;
                        *v += grad.square() * (1.0 - b2);
                        let bias1 = 1.0 - b1.powi(step as i32);
                        let bias2 = 1.0 - b2.powi(step as i32);
                        let denom = v.sqrt() / bias2.sqrt() + cfg.eps;
                        *param -= (&*m / denom) * (lr / bias1);
                    }
                    OptimizerKind::Sgd => {
                        let g = &grad + &*param * decay;
                        if step == 1 {
                            m.copy_(&g);
                        } else {
                            *m *= cfg.momentum;
                            *m += &g;
                        }
                        *param -= &*m * lr;
                    }
                }
            }
        });
    }

    #[test]
    fn in_place_update_agrees_with_the_formula_by_formula_one_across_save_and_restore() {
        for kind in [OptimizerKind::AdamW, OptimizerKind::Adam, OptimizerKind::Sgd] {
            let cfg = config(kind);
            tch::manual_seed(11);
            let shapes: [&[i64]; 3] = [&[4, 3, 2, 2], &[7], &[5, 6]];
            let init: Vec<Tensor> = shapes.iter().map(|s| Tensor::randn(*s, (Kind::Float, Device::Cpu))).collect();
            let fresh = |init: &[Tensor]| -> Vec<Param> {
                init.iter()
                    .enumerate()
                    .map(|(i, t)| Param::new(format!("p{i}"), t.copy().set_requires_grad(true)))
                    .collect()
            };
            let mut reference: Vec<(Tensor, Tensor, Tensor, bool)> = init
                .iter()
                .map(|t| (t.copy().set_requires_grad(true), t.zeros_like(), t.zeros_like(), t.dim() >= 2))
                .collect();
            let mut opt = Optimizer::new(fresh(&init), cfg);
            // A loss whose gradient changes from step to step: sum(sin(w) * w^2).
            let loss = |ws: Vec<&Tensor>| -> Tensor {
                ws.into_iter().map(|w| (w.sin() * w.square()).sum(Kind::Float)).fold(Tensor::from(0f32), |a, b| a + b)
            };
            for step in 1..=6i64 {
                let lr = 0.05 * step as f64;
                for (p, ..) in reference.iter_mut() {
                    p.zero_grad();
                }
                loss(reference.iter().map(|r| &r.0).collect()).backward();
                reference_step(cfg, step, lr, &mut reference);

                opt.zero_grad();
                loss(opt.params().iter().map(|p| &p.tensor).collect()).backward();
                opt.step(lr);
                if step == 3 {
                    // Save and restore into a new optimiser over copies of the parameters.
                    let (named, saved_step) = opt.state();
                    let saved: HashMap<String, Tensor> = named.into_iter().map(|(n, t)| (n, t.copy())).collect();
                    let now: Vec<Tensor> = opt.params().iter().map(|p| p.tensor.detach().copy()).collect();
                    let mut restored = Optimizer::new(fresh(&now), cfg);
                    restored.load_state(&saved, saved_step).unwrap();
                    opt = restored;
                }
            }
            for (p, r) in opt.params().iter().zip(&reference) {
                let diff = (&p.tensor - &r.0).abs().max().double_value(&[]);
                assert!(diff < 1e-6, "{kind:?} {}: differs by {diff}", p.name);
            }
        }
    }

    #[test]
    fn state_round_trip_continues_identically() {
        let run = |restore: bool| {
            let mut a = Optimizer::new(vec![param(&[1.0, -2.0], &[1, 2])], config(OptimizerKind::AdamW));
            for _ in 0..3 {
                a.zero_grad();
                backward(&a);
                a.step(0.05);
            }
            if restore {
                let (named, step) = a.state();
                let saved: HashMap<String, Tensor> = named.into_iter().map(|(n, t)| (n, t.copy())).collect();
                let w = a.params()[0].tensor.detach().copy().set_requires_grad(true);
                let mut b = Optimizer::new(vec![Param::new("w".into(), w)], config(OptimizerKind::AdamW));
                b.load_state(&saved, step).unwrap();
                a = b;
            }
            a.zero_grad();
            backward(&a);
            a.step(0.05);
            a.params()[0].tensor.detach().to_device(Device::Cpu)
        };
        assert!(run(true).allclose(&run(false), 1e-7, 1e-7, false));
    }
}
