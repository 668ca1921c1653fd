//! A stacked bidirectional LSTM over sequences, batch first, with PyTorch's parameter names
//! (`weight_ih_l0`, `weight_hh_l0`, `bias_ih_l0`, `bias_hh_l0`, and `_reverse` for the backward direction).
//!
//! In ONNX each layer is one `LSTM` node with `direction = bidirectional`. ONNX and PyTorch lay out the four
//! gates differently: PyTorch stacks them as input, forget, cell, output (`i f g o`), ONNX as input, output,
//! forget, cell (`i o f c`), so [`BiLstm::emit`] reorders the rows of every weight and bias.

use kiln_export::{Attr, Graph, Value};
use tch::{nn, Kind, Tensor};

use crate::onnx::{self, join, path_of};
use crate::Result;

/// One direction's parameters of one layer.
#[derive(Debug)]
struct DirectionWeights {
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor,
    b_hh: Tensor,
}

/// `num_layers` bidirectional LSTM layers of `hidden` units per direction.
#[derive(Debug)]
pub struct BiLstm {
    /// Per layer: forward, backward.
    layers: Vec<[DirectionWeights; 2]>,
    hidden: i64,
    name: String,
}

/// PyTorch's gate order `i f g o` → ONNX's `i o f c`, on the first dimension (`4 · hidden` rows).
fn onnx_gate_order(t: &Tensor) -> Tensor {
    let gates = t.chunk(4, 0);
    Tensor::cat(&[&gates[0], &gates[3], &gates[1], &gates[2]], 0)
}

impl BiLstm {
    /// Parameters under `p`, initialised as PyTorch does: uniform in ±1/√hidden.
    pub fn new(p: &nn::Path, input: i64, hidden: i64, num_layers: usize) -> Self {
        let bound = 1.0 / (hidden as f64).sqrt();
        let init = nn::Init::Uniform { lo: -bound, up: bound };
        let layers = (0..num_layers)
            .map(|l| {
                let in_dim = if l == 0 { input } else { 2 * hidden };
                let direction = |suffix: &str| DirectionWeights {
                    w_ih: p.var(&format!("weight_ih_l{l}{suffix}"), &[4 * hidden, in_dim], init),
                    w_hh: p.var(&format!("weight_hh_l{l}{suffix}"), &[4 * hidden, hidden], init),
                    b_ih: p.var(&format!("bias_ih_l{l}{suffix}"), &[4 * hidden], init),
                    b_hh: p.var(&format!("bias_hh_l{l}{suffix}"), &[4 * hidden], init),
                };
                [direction(""), direction("_reverse")]
            })
            .collect();
        Self { layers, hidden, name: path_of(p) }
    }

    /// Output features per step: both directions' hidden states, forward first.
    pub fn output_dim(&self) -> i64 {
        2 * self.hidden
    }

    /// # Shapes
    /// `[N, T, input]` → `[N, T, 2 · hidden]`
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let n = xs.size()[0];
        let layers = self.layers.len() as i64;
        let zeros = Tensor::zeros([2 * layers, n, self.hidden], (xs.kind(), xs.device()));
        let params: Vec<&Tensor> =
            self.layers.iter().flatten().flat_map(|d| [&d.w_ih, &d.w_hh, &d.b_ih, &d.b_hh]).collect();
        let (ys, _, _) = xs.lstm(&[&zeros, &zeros], &params, true, layers, 0.0, train, true, true);
        ys
    }

    /// ONNX of [`BiLstm::forward_t`] on a sequence-first input: `[T, N, input]` → `[T, N, 2 · hidden]`.
    pub fn emit(&self, g: &mut Graph, x: &Value) -> Result<Value> {
        let h = self.hidden;
        let mut y = x.clone();
        for (l, [fwd, bwd]) in self.layers.iter().enumerate() {
            let scope = join(&self.name, &format!("l{l}"));
            let stacked = |f: &dyn Fn(&DirectionWeights) -> Tensor| Tensor::stack(&[f(fwd), f(bwd)], 0);
            let w = stacked(&|d| onnx_gate_order(&d.w_ih));
            let r = stacked(&|d| onnx_gate_order(&d.w_hh));
            let b = stacked(&|d| Tensor::cat(&[onnx_gate_order(&d.b_ih), onnx_gate_order(&d.b_hh)], 0));
            let w = onnx::weight(g, &join(&scope, "W"), &w.to_kind(Kind::Float), None)?;
            let r = onnx::weight(g, &join(&scope, "R"), &r.to_kind(Kind::Float), None)?;
            let b = onnx::weight(g, &join(&scope, "B"), &b.to_kind(Kind::Float), None)?;
            y = g.scoped(&scope, |g| -> kiln_export::Result<Value> {
                // Y: [T, 2, N, hidden] → [T, N, 2, hidden] → [T, N, 2 · hidden].
                let out = g.op(
                    "LSTM",
                    &[&y, &w, &r, &b],
                    vec![Attr::Str("direction", "bidirectional"), Attr::Int("hidden_size", h)],
                )?;
                let out = g.op("Transpose", &[&out], vec![Attr::Ints("perm", vec![0, 2, 1, 3])])?;
                let shape = g.constant_i64("shape", &[0, 0, 2 * h])?;
                g.op("Reshape", &[&out, &shape], vec![])
            })?;
        }
        Ok(y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn parameter_names_are_pytorchs() {
        let vs = nn::VarStore::new(Device::Cpu);
        let lstm = BiLstm::new(&(vs.root() / "rnn"), 6, 4, 2);
        let mut names: Vec<String> = vs.variables().into_keys().collect();
        names.sort();
        assert_eq!(names.len(), 16);
        assert!(names.contains(&"rnn.weight_ih_l1_reverse".to_string()), "{names:?}");
        assert_eq!(vs.variables()["rnn.weight_ih_l1"].size(), [16, 8], "layer 2 reads both directions");
        assert_eq!(lstm.output_dim(), 8);
    }

    #[test]
    fn the_backward_direction_reads_the_sequence_from_its_end() {
        // Each direction's output at a step depends only on the steps it has read: changing the last step
        // changes the forward half only there, and the backward half everywhere.
        tch::manual_seed(3);
        let vs = nn::VarStore::new(Device::Cpu);
        let lstm = BiLstm::new(&vs.root(), 3, 5, 1);
        let xs = Tensor::randn([1, 6, 3], (Kind::Float, Device::Cpu));
        let changed = xs.copy();
        let _ = changed.narrow(1, 5, 1).fill_(4.0);
        let (a, b) = tch::no_grad(|| (lstm.forward_t(&xs, false), lstm.forward_t(&changed, false)));
        let diff = (a - b).abs().squeeze_dim(0); // [T, 10]
        let forward_early = diff.narrow(0, 0, 5).narrow(1, 0, 5).max().double_value(&[]);
        let backward_early = diff.narrow(0, 0, 5).narrow(1, 5, 5).max().double_value(&[]);
        assert_eq!(forward_early, 0.0);
        assert!(backward_early > 1e-4, "{backward_early}");
    }
}
