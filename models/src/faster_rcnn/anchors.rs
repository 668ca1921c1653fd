//! The RPN's anchors, as torchvision's `AnchorGenerator` makes them: per pyramid level, one base anchor for each
//! (aspect ratio, size) pair centred on the origin and rounded to whole pixels, shifted to every cell's top-left
//! corner `(j · stride, i · stride)`. Order: level by level, row-major cells, the cell's anchors innermost (ratio
//! major, size minor), which is the order of the RPN head's flattened outputs.

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// Anchor sizes per level (the square root of the anchor's area, in input pixels) and the aspect ratios
/// (height / width) every level shares.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnchorConfig {
    /// One list per pyramid level, smallest level first (P2 …): torchvision's `((32,), (64,), (128,), (256,), (512,))`.
    pub sizes: Vec<Vec<f64>>,
    /// torchvision's `(0.5, 1.0, 2.0)`.
    pub aspect_ratios: Vec<f64>,
}

impl Default for AnchorConfig {
    fn default() -> Self {
        Self {
            sizes: vec![vec![32.0], vec![64.0], vec![128.0], vec![256.0], vec![512.0]],
            aspect_ratios: vec![0.5, 1.0, 2.0],
        }
    }
}

impl AnchorConfig {
    /// Anchors per cell on level `level`.
    pub fn per_cell(&self, level: usize) -> i64 {
        (self.sizes[level].len() * self.aspect_ratios.len()) as i64
    }

    /// An error message unless every level has the same number of anchors per cell (the RPN head is shared) and
    /// every size and ratio is positive and finite.
    pub fn check(&self, levels: usize) -> std::result::Result<(), String> {
        if self.sizes.len() != levels {
            return Err(format!("{} size lists for {levels} pyramid levels", self.sizes.len()));
        }
        if self.aspect_ratios.is_empty() || self.sizes.iter().any(Vec::is_empty) {
            return Err("every level needs at least one size, and at least one aspect ratio".into());
        }
        if self.sizes.iter().any(|s| s.len() != self.sizes[0].len()) {
            return Err("every level needs the same number of sizes (the RPN head is shared by the levels)".into());
        }
        let bad = |v: &f64| !(v.is_finite() && *v > 0.0);
        if self.sizes.iter().flatten().any(bad) || self.aspect_ratios.iter().any(bad) {
            return Err("sizes and aspect ratios must be positive numbers".into());
        }
        Ok(())
    }

    /// The base anchors of one level, `[A, 4]` float: torchvision's `generate_anchors` (in float32, rounded half
    /// to even as `torch.round`).
    pub fn cell_anchors(&self, level: usize) -> Tensor {
        let opts = (Kind::Float, Device::Cpu);
        let scales = Tensor::from_slice(&self.sizes[level].iter().map(|&s| s as f32).collect::<Vec<_>>());
        let ratios = Tensor::from_slice(&self.aspect_ratios.iter().map(|&r| r as f32).collect::<Vec<_>>());
        let h_ratios = ratios.sqrt();
        let w_ratios = Tensor::ones([1], opts) / &h_ratios;
        let ws = (w_ratios.unsqueeze(1) * scales.unsqueeze(0)).view([-1]);
        let hs = (h_ratios.unsqueeze(1) * scales.unsqueeze(0)).view([-1]);
        (Tensor::stack(&[-&ws, -&hs, ws, hs], 1) / 2.0).round()
    }

    /// Every anchor of an `image_height × image_width` input whose levels have `level_sizes` `(h, w)`: `[A, 4]`,
    /// with each level's stride `image // grid` per axis as torchvision computes it.
    pub fn grid_anchors(&self, image_height: i64, image_width: i64, level_sizes: &[(i64, i64)]) -> Tensor {
        let levels: Vec<Tensor> = level_sizes
            .iter()
            .enumerate()
            .map(|(level, &(h, w))| {
                let (stride_h, stride_w) = (image_height / h, image_width / w);
                let opts = (Kind::Int, Device::Cpu);
                let shifts_x = Tensor::arange(w, opts) * stride_w;
                let shifts_y = Tensor::arange(h, opts) * stride_h;
                let grid = Tensor::meshgrid_indexing(&[shifts_y, shifts_x], "ij");
                let (sy, sx) = (grid[0].reshape([-1]), grid[1].reshape([-1]));
                let shifts = Tensor::stack(&[&sx, &sy, &sx, &sy], 1).to_kind(Kind::Float);
                (shifts.view([-1, 1, 4]) + self.cell_anchors(level).view([1, -1, 4])).reshape([-1, 4])
            })
            .collect();
        Tensor::cat(&levels, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torchvision_base_anchors_for_size_32() {
        // torchvision: AnchorGenerator(((32,),), ((0.5, 1.0, 2.0),)).cell_anchors[0]
        let base: Vec<f32> = Vec::try_from(AnchorConfig::default().cell_anchors(0).flatten(0, -1)).unwrap();
        assert_eq!(base, [-23.0, -11.0, 23.0, 11.0, -16.0, -16.0, 16.0, 16.0, -11.0, -23.0, 11.0, 23.0]);
    }

    #[test]
    fn grid_order_is_cell_major_with_the_cells_anchors_inside() {
        let config = AnchorConfig { sizes: vec![vec![8.0], vec![16.0]], aspect_ratios: vec![1.0, 2.0] };
        let anchors = config.grid_anchors(16, 32, &[(4, 8), (2, 4)]);
        assert_eq!(anchors.size(), [4 * 8 * 2 + 2 * 4 * 2, 4]);
        let row = |i: i64| -> Vec<f32> { Vec::try_from(anchors.get(i)).unwrap() };
        assert_eq!(row(0), [-4.0, -4.0, 4.0, 4.0]);
        assert_eq!(row(2), [0.0, -4.0, 8.0, 4.0], "the second cell is one stride (4) to the right");
        assert_eq!(row(16), [-4.0, 0.0, 4.0, 8.0], "the second row starts one stride down");
        assert_eq!(row(64), [-8.0, -8.0, 8.0, 8.0], "the second level");
        assert!(config.check(2).is_ok());
        assert!(config.check(3).unwrap_err().contains("2 size lists"));
        let uneven = AnchorConfig { sizes: vec![vec![8.0], vec![16.0, 20.0]], aspect_ratios: vec![1.0] };
        assert!(uneven.check(2).unwrap_err().contains("same number"));
    }
}
