//! Classification metrics from a confusion matrix, with scikit-learn's conventions (`zero_division=0`).

use serde::{Deserialize, Serialize};

/// Confusion matrix: rows are true classes, columns predicted classes.
///
/// Class indices are `0..num_classes`; recording an index outside that range is a caller bug and panics.
/// Deserialization checks that `counts` holds exactly `num_classes²` entries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawConfusionMatrix")]
pub struct ConfusionMatrix {
    num_classes: usize,
    /// Row-major: `counts[truth * num_classes + predicted]`.
    counts: Vec<u64>,
}

/// The serialized form of [`ConfusionMatrix`], validated on the way in.
#[derive(Deserialize)]
struct RawConfusionMatrix {
    num_classes: usize,
    counts: Vec<u64>,
}

impl TryFrom<RawConfusionMatrix> for ConfusionMatrix {
    type Error = String;

    fn try_from(raw: RawConfusionMatrix) -> Result<Self, Self::Error> {
        let expected = raw.num_classes.checked_mul(raw.num_classes);
        if expected != Some(raw.counts.len()) {
            return Err(format!(
                "confusion matrix: {} counts for {} classes (expected num_classes²)",
                raw.counts.len(),
                raw.num_classes
            ));
        }
        Ok(Self { num_classes: raw.num_classes, counts: raw.counts })
    }
}

impl ConfusionMatrix {
    /// An all-zero matrix for `num_classes` classes.
    pub fn new(num_classes: usize) -> Self {
        Self { num_classes, counts: vec![0; num_classes * num_classes] }
    }

    /// Records one sample of true class `truth` predicted as `predicted`.
    ///
    /// # Panics
    /// If either index is not below [`num_classes`](Self::num_classes).
    pub fn add(&mut self, truth: usize, predicted: usize) {
        let i = self.index(truth, predicted);
        self.counts[i] += 1;
    }

    /// Records a batch of samples: `truths[k]` predicted as `predicted[k]`
    /// (e.g. labels and arg-max predictions taken from tensors).
    ///
    /// # Panics
    /// If the slices differ in length, or a value is negative or not below [`num_classes`](Self::num_classes).
    pub fn add_batch(&mut self, truths: &[i64], predicted: &[i64]) {
        assert_eq!(
            truths.len(),
            predicted.len(),
            "ConfusionMatrix::add_batch: {} truths but {} predictions",
            truths.len(),
            predicted.len()
        );
        for (&t, &p) in truths.iter().zip(predicted) {
            let class = |v: i64| {
                usize::try_from(v).unwrap_or_else(|_| panic!("ConfusionMatrix::add_batch: negative class index {v}"))
            };
            self.add(class(t), class(p));
        }
    }

    /// How many samples of true class `truth` were predicted as `predicted`.
    ///
    /// # Panics
    /// If either index is not below [`num_classes`](Self::num_classes).
    pub fn get(&self, truth: usize, predicted: usize) -> u64 {
        self.counts[self.index(truth, predicted)]
    }

    /// The number of classes (the matrix is `num_classes × num_classes`).
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// The number of samples recorded.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The counts as rows (one per true class), each with one entry per predicted class.
    pub fn rows(&self) -> Vec<Vec<u64>> {
        if self.num_classes == 0 {
            return Vec::new();
        }
        self.counts.chunks(self.num_classes).map(<[u64]>::to_vec).collect()
    }

    /// Adds the counts of `other` (e.g. from another evaluation shard) to this matrix.
    ///
    /// # Panics
    /// If the two matrices have different numbers of classes.
    pub fn merge(&mut self, other: &ConfusionMatrix) {
        assert_eq!(
            self.num_classes, other.num_classes,
            "ConfusionMatrix::merge: {} classes vs {} classes",
            self.num_classes, other.num_classes
        );
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
    }

    /// Accuracy, per-class and macro-averaged precision/recall/F1, and (for two classes) specificity.
    ///
    /// Follows scikit-learn with `zero_division=0`: a class never predicted has precision 0, a class never
    /// present has recall 0, F1 is 0 when precision + recall is 0, macro averages are unweighted means over
    /// all `num_classes` classes, and every metric of an empty matrix is 0.
    pub fn metrics(&self) -> ClassificationMetrics {
        let n = self.num_classes;
        let total = self.total();
        let correct: u64 = (0..n).map(|c| self.get(c, c)).sum();
        let per_class: Vec<ClassMetrics> = (0..n)
            .map(|c| {
                let tp = self.get(c, c);
                let predicted: u64 = (0..n).map(|t| self.get(t, c)).sum();
                let support: u64 = (0..n).map(|p| self.get(c, p)).sum();
                let precision = ratio(tp, predicted);
                let recall = ratio(tp, support);
                let f1 = if precision + recall > 0.0 { 2.0 * precision * recall / (precision + recall) } else { 0.0 };
                ClassMetrics { precision, recall, f1, support }
            })
            .collect();
        let mean = |f: fn(&ClassMetrics) -> f64| {
            if per_class.is_empty() {
                0.0
            } else {
                per_class.iter().map(f).sum::<f64>() / per_class.len() as f64
            }
        };
        let specificity = (n == 2).then(|| {
            let (tn, fp) = (self.get(0, 0), self.get(0, 1));
            ratio(tn, tn + fp)
        });
        ClassificationMetrics {
            accuracy: ratio(correct, total),
            precision_macro: mean(|m| m.precision),
            recall_macro: mean(|m| m.recall),
            f1_macro: mean(|m| m.f1),
            specificity,
            top5_accuracy: None,
            ece: None,
            support: total,
            per_class,
        }
    }

    fn index(&self, truth: usize, predicted: usize) -> usize {
        assert!(
            truth < self.num_classes && predicted < self.num_classes,
            "ConfusionMatrix: class index ({truth}, {predicted}) out of range for {} classes",
            self.num_classes
        );
        truth * self.num_classes + predicted
    }
}

/// `num / den`, or 0 when `den` is 0.
fn ratio(num: u64, den: u64) -> f64 {
    if den == 0 {
        0.0
    } else {
        num as f64 / den as f64
    }
}

/// Metrics of one class, treated one-vs-rest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    /// TP / (TP + FP); 0 when the class is never predicted.
    pub precision: f64,
    /// TP / (TP + FN); 0 when the class never occurs.
    pub recall: f64,
    /// Harmonic mean of precision and recall; 0 when both are 0.
    pub f1: f64,
    /// The number of samples whose true class is this one.
    pub support: u64,
}

impl std::fmt::Display for ClassificationMetrics {
    /// Accuracy and the macro precision / recall / F1 (top-5 and ECE where measured), on one line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "accuracy {:.4}  precision {:.4}  recall {:.4}  f1 {:.4}",
            self.accuracy, self.precision_macro, self.recall_macro, self.f1_macro
        )?;
        if let Some(t) = self.top5_accuracy {
            write!(f, "  top-5 {t:.4}")?;
        }
        if let Some(e) = self.ece {
            write!(f, "  ECE {e:.4}")?;
        }
        Ok(())
    }
}

/// Summary metrics of a confusion matrix, see [`ConfusionMatrix::metrics`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassificationMetrics {
    /// Fraction of samples predicted correctly; 0 for an empty matrix.
    pub accuracy: f64,
    /// Unweighted mean of the per-class precisions.
    pub precision_macro: f64,
    /// Unweighted mean of the per-class recalls.
    pub recall_macro: f64,
    /// Unweighted mean of the per-class F1 scores.
    pub f1_macro: f64,
    /// TN / (TN + FP) with class 1 as the positive class; only when there are exactly two classes.
    pub specificity: Option<f64>,
    /// Fraction of samples whose class is among the five highest scores (all of them with fewer than five
    /// classes, as timm's `accuracy(topk=(1, 5))`); set by evaluations that see the scores, not by a confusion
    /// matrix alone.
    #[serde(default)]
    pub top5_accuracy: Option<f64>,
    /// Expected calibration error of the top-1 confidence (15 equal-width bins); set with the scores, as
    /// `top5_accuracy`.
    #[serde(default)]
    pub ece: Option<f64>,
    /// One entry per class, in class-index order.
    pub per_class: Vec<ClassMetrics>,
    /// The total number of samples.
    pub support: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    macro_rules! assert_close {
        ($a:expr, $b:expr) => {{
            let (a, b): (f64, f64) = ($a, $b);
            assert!(close(a, b), "{} = {a}, expected {b}", stringify!($a));
        }};
    }

    fn from_rows(rows: &[&[u64]]) -> ConfusionMatrix {
        let mut cm = ConfusionMatrix::new(rows.len());
        for (t, row) in rows.iter().enumerate() {
            for (p, &count) in row.iter().enumerate() {
                for _ in 0..count {
                    cm.add(t, p);
                }
            }
        }
        cm
    }

    #[test]
    fn three_classes() {
        // truth \ pred   0  1  2   | support
        //    0           5  1  0   |  6
        //    1           2  3  1   |  6
        //    2           0  2  6   |  8
        // predicted      7  6  7   | 20
        let cm = from_rows(&[&[5, 1, 0], &[2, 3, 1], &[0, 2, 6]]);
        assert_eq!(cm.total(), 20);
        assert_eq!(cm.rows(), vec![vec![5, 1, 0], vec![2, 3, 1], vec![0, 2, 6]]);
        let m = cm.metrics();
        // accuracy = (5 + 3 + 6) / 20 = 0.7
        assert_close!(m.accuracy, 0.7);
        assert_eq!(m.support, 20);
        assert_eq!(m.specificity, None);
        // class 0: P = 5/7, R = 5/6, F1 = 2·5/(7+6) = 10/13
        // class 1: P = 3/6, R = 3/6, F1 = 1/2
        // class 2: P = 6/7, R = 6/8, F1 = 2·6/(7+8) = 4/5
        let expected = [(5.0 / 7.0, 5.0 / 6.0, 10.0 / 13.0, 6), (0.5, 0.5, 0.5, 6), (6.0 / 7.0, 0.75, 0.8, 8)];
        for (c, (p, r, f, s)) in m.per_class.iter().zip(expected) {
            assert_close!(c.precision, p);
            assert_close!(c.recall, r);
            assert_close!(c.f1, f);
            assert_eq!(c.support, s);
        }
        // macro P = (5/7 + 1/2 + 6/7) / 3 = (22/14 + 7/14) / 3 = 29/42
        assert_close!(m.precision_macro, 29.0 / 42.0);
        // macro R = (10/12 + 6/12 + 9/12) / 3 = 25/36
        assert_close!(m.recall_macro, 25.0 / 36.0);
        // macro F1 = (100/130 + 65/130 + 104/130) / 3 = 269/390
        assert_close!(m.f1_macro, 269.0 / 390.0);
    }

    #[test]
    fn binary_with_specificity() {
        // truth \ pred   0 (neg)   1 (pos)
        //    0           TN = 50   FP = 10
        //    1           FN = 5    TP = 35
        let mut cm = ConfusionMatrix::new(2);
        let mut truths = Vec::new();
        let mut preds = Vec::new();
        for (t, p, n) in [(0, 0, 50), (0, 1, 10), (1, 0, 5), (1, 1, 35)] {
            truths.extend(std::iter::repeat_n(t, n));
            preds.extend(std::iter::repeat_n(p, n));
        }
        cm.add_batch(&truths, &preds);
        assert_eq!((cm.get(0, 0), cm.get(0, 1), cm.get(1, 0), cm.get(1, 1)), (50, 10, 5, 35));
        let m = cm.metrics();
        // accuracy = 85/100; specificity = TN / (TN + FP) = 50/60 = 5/6
        assert_close!(m.accuracy, 0.85);
        assert_close!(m.specificity.unwrap(), 5.0 / 6.0);
        // class 1: P = 35/45 = 7/9, R = 35/40 = 7/8, F1 = 70/85 = 14/17
        assert_close!(m.per_class[1].precision, 7.0 / 9.0);
        assert_close!(m.per_class[1].recall, 7.0 / 8.0);
        assert_close!(m.per_class[1].f1, 14.0 / 17.0);
        // class 0: P = 50/55 = 10/11, R = 50/60 = 5/6 (= specificity), F1 = 100/115 = 20/23
        assert_close!(m.per_class[0].precision, 10.0 / 11.0);
        assert_close!(m.per_class[0].recall, 5.0 / 6.0);
        assert_close!(m.per_class[0].f1, 20.0 / 23.0);
        assert_close!(m.f1_macro, (14.0 / 17.0 + 20.0 / 23.0) / 2.0);
    }

    #[test]
    fn class_never_predicted_and_class_never_present() {
        // 4 classes; truths 0 0 1 1 2 2, predictions 0 0 1 3 1 0.
        // truth \ pred   0  1  2  3  | support
        //    0           2  0  0  0  | 2
        //    1           0  1  0  1  | 2
        //    2           1  1  0  0  | 2   <- class 2 is never predicted
        //    3           0  0  0  0  | 0   <- class 3 never occurs, but is predicted once
        // predicted      3  2  0  1
        let mut cm = ConfusionMatrix::new(4);
        cm.add_batch(&[0, 0, 1, 1, 2, 2], &[0, 0, 1, 3, 1, 0]);
        let m = cm.metrics();
        assert_close!(m.accuracy, 0.5); // 3 / 6
        let c = &m.per_class;
        // class 0: P = 2/3, R = 2/2, F1 = 2·2/(3+2) = 4/5
        assert_close!(c[0].precision, 2.0 / 3.0);
        assert_close!(c[0].recall, 1.0);
        assert_close!(c[0].f1, 0.8);
        // class 1: P = 1/2, R = 1/2, F1 = 1/2
        assert_close!(c[1].f1, 0.5);
        // class 2: never predicted -> P = 0; TP = 0 -> R = 0, F1 = 0
        assert_eq!((c[2].precision, c[2].recall, c[2].f1, c[2].support), (0.0, 0.0, 0.0, 2));
        // class 3: never present -> R = 0; predicted once wrongly -> P = 0/1 = 0
        assert_eq!((c[3].precision, c[3].recall, c[3].f1, c[3].support), (0.0, 0.0, 0.0, 0));
        // macro over all 4 classes: P = (2/3 + 1/2)/4 = 7/24, R = (1 + 1/2)/4 = 3/8, F1 = (4/5 + 1/2)/4 = 13/40
        assert_close!(m.precision_macro, 7.0 / 24.0);
        assert_close!(m.recall_macro, 3.0 / 8.0);
        assert_close!(m.f1_macro, 13.0 / 40.0);
        assert_eq!(m.specificity, None);
    }

    #[test]
    fn empty_matrices_are_all_zero() {
        let m = ConfusionMatrix::new(3).metrics();
        assert_eq!((m.accuracy, m.precision_macro, m.recall_macro, m.f1_macro), (0.0, 0.0, 0.0, 0.0));
        assert_eq!(m.support, 0);
        assert_eq!(m.per_class.len(), 3);
        assert!(m.per_class.iter().all(|c| c == &ClassMetrics { precision: 0.0, recall: 0.0, f1: 0.0, support: 0 }));
        assert_eq!(ConfusionMatrix::new(2).metrics().specificity, Some(0.0));

        let zero = ConfusionMatrix::new(0);
        assert_eq!(zero.total(), 0);
        assert!(zero.rows().is_empty());
        let m = zero.metrics();
        assert_eq!((m.accuracy, m.f1_macro, m.per_class.len()), (0.0, 0.0, 0));
    }

    #[test]
    fn merge_equals_recording_everything_in_one_matrix() {
        let (truths, preds) = ([0, 1, 2, 2, 1, 0, 2], [0, 2, 2, 1, 1, 0, 2]);
        let mut whole = ConfusionMatrix::new(3);
        whole.add_batch(&truths, &preds);
        let mut a = ConfusionMatrix::new(3);
        a.add_batch(&truths[..3], &preds[..3]);
        let mut b = ConfusionMatrix::new(3);
        b.add_batch(&truths[3..], &preds[3..]);
        a.merge(&b);
        assert_eq!(a, whole);
        // (0,0) twice, (1,1) once, (1,2) once, (2,1) once, (2,2) twice
        assert_eq!(a.rows(), vec![vec![2, 0, 0], vec![0, 1, 1], vec![0, 1, 2]]);
        assert_eq!(a.total(), 7);
        assert_eq!(a.metrics(), whole.metrics());
    }

    #[test]
    fn serde_round_trip_and_validation() {
        let mut cm = ConfusionMatrix::new(2);
        cm.add(1, 0);
        cm.add(0, 0);
        let json = serde_json::to_string(&cm).unwrap();
        assert_eq!(serde_json::from_str::<ConfusionMatrix>(&json).unwrap(), cm);
        let bad = r#"{"num_classes": 3, "counts": [1, 2]}"#;
        assert!(serde_json::from_str::<ConfusionMatrix>(bad).is_err());
        let metrics = serde_json::to_value(cm.metrics()).unwrap();
        assert_eq!(metrics["specificity"], 1.0);
    }

    #[test]
    #[should_panic(expected = "out of range")]
    fn out_of_range_class_panics() {
        ConfusionMatrix::new(2).add(2, 0);
    }

    #[test]
    #[should_panic(expected = "2 truths but 1 predictions")]
    fn batch_length_mismatch_panics() {
        ConfusionMatrix::new(2).add_batch(&[0, 1], &[0]);
    }
}
