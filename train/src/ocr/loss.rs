//! The recognizer's loss: libtorch's CTC loss over each line's own frames (padding frames are not part of the
//! alignment), blank = 0, infinite losses (a label the line cannot align) zeroed, and each line's loss divided by
//! its label length before the batch mean (PyTorch's `reduction = mean`).

use tch::{Device, Kind, Reduction, Tensor};

use kiln_models::text_line::BLANK;
use kiln_models::TextLineRecognizer;

use super::loader::{LineTarget, TextBatch};
use crate::engine::Losses;
use crate::precision::Precision;
use crate::Result;

/// The CTC loss of per-frame `logits` `[N, T, K]` against `targets`.
pub fn ctc_loss(logits: &Tensor, targets: &[LineTarget]) -> Tensor {
    let device = logits.device();
    let log_probs = logits.to_kind(Kind::Float).log_softmax(-1, Kind::Float).transpose(0, 1); // [T, N, K]
    let flat: Vec<i64> = targets.iter().flat_map(|t| t.classes.iter().copied()).collect();
    let target_lengths: Vec<i64> = targets.iter().map(|t| t.classes.len() as i64).collect();
    let input_lengths: Vec<i64> = targets.iter().map(|t| t.frames as i64).collect();
    let on = |v: &[i64]| Tensor::from_slice(v).to_device(device);
    Tensor::ctc_loss_tensor(
        &log_probs,
        &on(&flat),
        &on(&input_lengths),
        &on(&target_lengths),
        BLANK,
        Reduction::Mean,
        true,
    )
}

/// The training loss of a batch: forward in training mode under `precision`, then [`ctc_loss`].
pub fn batch_loss(model: &TextLineRecognizer, batch: &TextBatch, precision: &Precision) -> Result<Losses> {
    let device: Device = precision.device;
    let xs = precision.prepare_batch(&batch.images.to_device(device))?;
    let logits = precision.autocast(|| model.forward_t(&xs, true));
    Ok(Losses::single(ctc_loss(&logits, &batch.targets)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(classes: &[i64], frames: usize) -> LineTarget {
        LineTarget { classes: classes.to_vec(), frames, index: 0 }
    }

    #[test]
    fn a_confident_right_alignment_costs_nearly_nothing_and_padding_frames_do_not_count() {
        // Frames: 1, blank, 2, then padding frames that strongly say "1".
        let mut logits = [[-9.0f32; 3]; 6];
        logits[0][1] = 9.0;
        logits[1][0] = 9.0;
        logits[2][2] = 9.0;
        for frame in &mut logits[3..] {
            frame[1] = 9.0;
        }
        let flat: Vec<f32> = logits.iter().flatten().copied().collect();
        let logits = Tensor::from_slice(&flat).view([1, 6, 3]);
        let right = ctc_loss(&logits, &[target(&[1, 2], 3)]).double_value(&[]);
        assert!(right < 1e-3, "{right}");
        let with_padding = ctc_loss(&logits, &[target(&[1, 2], 6)]).double_value(&[]);
        assert!(with_padding > 1.0, "the padding frames would add 1s: {with_padding}");
        let wrong = ctc_loss(&logits, &[target(&[2, 1], 3)]).double_value(&[]);
        assert!(wrong > 5.0, "{wrong}");
    }

    #[test]
    fn an_impossible_alignment_is_zeroed_not_infinite() {
        let logits = Tensor::zeros([1, 2, 3], (Kind::Float, Device::Cpu));
        let loss = ctc_loss(&logits, &[target(&[1, 1, 1], 2)]).double_value(&[]);
        assert_eq!(loss, 0.0);
    }
}
