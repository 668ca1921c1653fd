//! Quantization arithmetic as ONNX defines it: `QuantizeLinear` is `saturate(round_half_even(x / scale) + zp)`,
//! `DequantizeLinear` is `(q - zp) · scale`.
//!
//! Activations are uint8 with a zero point (asymmetric, so a post-GELU range like `[-0.17, 6]` keeps its
//! resolution); weights are int8, symmetric (`zp = 0`) and per output channel, in `[-127, 127]` so that negating a
//! weight never saturates. That pairing (U8S8) is the one ONNX Runtime's x86 int8 kernels are built for.

/// uint8 quantization parameters of one activation tensor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QParams {
    pub scale: f32,
    pub zero_point: u8,
}

impl QParams {
    /// Parameters covering `[min, max]`, widened to include 0 (so zero padding and ReLU-like zeros are exact). An
    /// empty or non-finite range gets scale 1 and zero point 0.
    pub fn from_range(min: f32, max: f32) -> Self {
        if !(min.is_finite() && max.is_finite()) {
            return Self { scale: 1.0, zero_point: 0 };
        }
        let (lo, hi) = (min.min(0.0), max.max(0.0));
        if hi - lo <= f32::MIN_POSITIVE {
            return Self { scale: 1.0, zero_point: 0 };
        }
        let scale = (hi - lo) / 255.0;
        let zero_point = (-lo / scale).round_ties_even().clamp(0.0, 255.0) as u8;
        Self { scale, zero_point }
    }

    pub fn quantize(&self, x: f32) -> u8 {
        ((x / self.scale).round_ties_even() + self.zero_point as f32).clamp(0.0, 255.0) as u8
    }

    pub fn dequantize(&self, q: u8) -> f32 {
        (q as f32 - self.zero_point as f32) * self.scale
    }
}

/// The largest magnitude of a symmetric int8 weight.
pub const WEIGHT_QMAX: f32 = 127.0;

/// Symmetric int8 weights, one scale per slice along `axis` of a tensor of shape `dims` (row-major): each slice's
/// largest magnitude maps to ±127. An all-zero slice gets scale 1.
pub fn quantize_per_channel(values: &[f32], dims: &[usize], axis: usize) -> (Vec<i8>, Vec<f32>) {
    let channels = dims[axis];
    let inner: usize = dims[axis + 1..].iter().product();
    let mut amax = vec![0f32; channels];
    for (i, v) in values.iter().enumerate() {
        let c = (i / inner) % channels;
        amax[c] = amax[c].max(v.abs());
    }
    let scales: Vec<f32> = amax.iter().map(|&a| if a > 0.0 { a / WEIGHT_QMAX } else { 1.0 }).collect();
    let q = values
        .iter()
        .enumerate()
        .map(|(i, v)| (v / scales[(i / inner) % channels]).round_ties_even().clamp(-WEIGHT_QMAX, WEIGHT_QMAX) as i8)
        .collect();
    (q, scales)
}

/// A bias quantized as ONNX Runtime's QLinearConv expects: int32 with scale `input_scale · weight_scale[c]` and
/// zero point 0, so that it adds straight into the int32 accumulator.
pub fn quantize_bias(bias: &[f32], input_scale: f32, weight_scales: &[f32]) -> (Vec<i32>, Vec<f32>) {
    let scales: Vec<f32> = weight_scales.iter().map(|w| input_scale * w).collect();
    let q = bias
        .iter()
        .zip(&scales)
        .map(|(b, s)| (b / s).round_ties_even().clamp(i32::MIN as f32, i32::MAX as f32) as i32)
        .collect();
    (q, scales)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_trip_is_within_half_a_step_inside_the_range() {
        let p = QParams::from_range(-0.7, 5.3);
        assert!((p.scale - 6.0 / 255.0).abs() < 1e-7);
        for i in 0..=1000 {
            let x = -0.7 + 6.0 * i as f32 / 1000.0;
            let back = p.dequantize(p.quantize(x));
            assert!((back - x).abs() <= p.scale / 2.0 + 1e-6, "{x} -> {back}");
        }
        // Outside the range values saturate to the ends.
        assert_eq!(p.quantize(100.0), 255);
        assert_eq!(p.quantize(-100.0), 0);
    }

    #[test]
    fn zero_is_exact_and_the_range_always_contains_it() {
        for (lo, hi) in [(-0.7, 5.3), (0.5, 2.0), (-3.0, -1.0), (-1.0, 1.0)] {
            let p = QParams::from_range(lo, hi);
            assert_eq!(p.dequantize(p.quantize(0.0)), 0.0, "{lo}..{hi}");
        }
        assert_eq!(QParams::from_range(0.5, 2.0).zero_point, 0);
        assert_eq!(QParams::from_range(-3.0, -1.0).zero_point, 255);
        assert_eq!(QParams::from_range(0.0, 0.0), QParams { scale: 1.0, zero_point: 0 });
        assert_eq!(QParams::from_range(f32::NAN, 1.0), QParams { scale: 1.0, zero_point: 0 });
    }

    #[test]
    fn rounding_is_half_to_even_as_onnx_defines_it() {
        let p = QParams { scale: 1.0, zero_point: 10 };
        assert_eq!([p.quantize(0.5), p.quantize(1.5), p.quantize(2.5), p.quantize(-0.5)], [10, 12, 12, 10]);
    }

    #[test]
    fn weights_get_one_symmetric_scale_per_channel() {
        // Two output channels (axis 0) of three inputs each.
        let w = [0.5, -1.0, 0.25, 0.0, 0.0, 0.0];
        let (q, s) = quantize_per_channel(&w, &[2, 3], 0);
        assert_eq!(s, vec![1.0 / 127.0, 1.0]);
        assert_eq!(q, vec![64, -127, 32, 0, 0, 0]);
        // Along axis 1 of a [2, 3] matrix (a MatMul weight's output columns).
        let (q, s) = quantize_per_channel(&w, &[2, 3], 1);
        assert_eq!(s, vec![0.5 / 127.0, 1.0 / 127.0, 0.25 / 127.0]);
        assert_eq!(q, vec![127, -127, 127, 0, 0, 0]);
        for (i, v) in w.iter().enumerate() {
            let back = q[i] as f32 * s[i % 3];
            assert!((back - v).abs() <= s[i % 3] / 2.0, "within one step");
        }
    }

    #[test]
    fn a_bias_lands_on_the_accumulator_scale() {
        let (q, s) = quantize_bias(&[0.3, -0.02], 0.01, &[0.5, 0.02]);
        assert_eq!(s, vec![0.005, 0.0002]);
        assert_eq!(q, vec![60, -100]);
    }
}
