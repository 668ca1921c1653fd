//! The auto-augment operations against torchvision's own output (`tests/fixtures/auto_augment/ops.json`, made by
//! `scripts/make_auto_augment_fixture.py`), the magnitude tables against torchvision's, and the policies' draws.

use super::*;
use rand::SeedableRng;
use serde_json::Value;

const FIXTURE: &str = include_str!("../../../tests/fixtures/auto_augment/ops.json");

fn hex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

fn kind(name: &str) -> OpKind {
    *OpKind::ALL.iter().find(|k| format!("{k:?}") == name).unwrap_or_else(|| panic!("unknown op {name}"))
}

fn fixture() -> (Value, RgbImage) {
    let f: Value = serde_json::from_str(FIXTURE).unwrap();
    let (w, h) = (f["width"].as_u64().unwrap() as u32, f["height"].as_u64().unwrap() as u32);
    let input = RgbImage::from_raw(w, h, hex(f["input"].as_str().unwrap())).unwrap();
    (f, input)
}

#[test]
fn every_operation_matches_torchvision_on_pil() {
    let (f, input) = fixture();
    let mut report = Vec::new();
    for case in f["cases"].as_array().unwrap() {
        let name = case["op"].as_str().unwrap();
        let op = Op { kind: kind(name), magnitude: case["magnitude"].as_f64().unwrap() };
        let expected = hex(case["output"].as_str().unwrap());
        let got = op.apply(&input).into_raw();
        assert_eq!(got.len(), expected.len());
        let pixels = got.len() / 3;
        let differing = (0..pixels).filter(|&i| got[3 * i..3 * i + 3] != expected[3 * i..3 * i + 3]).count();
        let far = got.iter().zip(&expected).filter(|(a, b)| (**a as i32 - **b as i32).abs() > 1).count();
        if differing > 0 {
            report.push(format!("{name}({}): {differing} pixels differ, {far} values by more than 1", op.magnitude));
        }
    }
    // PIL's fixed-point sampling, truncating blends and rounded smoothing are reproduced exactly.
    assert!(report.is_empty(), "{report:?}");
}

#[test]
fn magnitude_tables_are_torchvisions() {
    let (f, input) = fixture();
    let (w, h) = input.dimensions();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    for (key, table) in [("rand_tables", Table::Rand { width: w, height: h }), ("wide_tables", Table::Wide)] {
        for (name, values) in f[key].as_object().unwrap() {
            let kind = kind(name);
            let values = values.as_array().unwrap();
            if values.is_empty() {
                assert!(!kind.has_magnitude(), "{name}");
                continue;
            }
            assert_eq!(values.len(), 31);
            for (bin, v) in values.iter().enumerate() {
                let got = kind.at(table, bin, 31, &mut rng).magnitude.abs();
                let want = v.as_f64().unwrap();
                assert!((got - want).abs() <= 1e-5 * want.abs().max(1.0), "{key} {name}[{bin}]: {got} vs {want}");
            }
        }
    }
}

#[test]
fn rand_augment_draws_its_ops_uniformly_at_its_magnitude_with_random_signs() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(4);
    let policy = AutoAugment::RAND_AUGMENT;
    let mut counts = [0usize; 14];
    let (mut positive, mut negative) = (0, 0);
    for _ in 0..7000 {
        let ops = policy.sample(32, 32, &mut rng);
        assert_eq!(ops.len(), 2);
        for op in ops {
            counts[OpKind::ALL.iter().position(|k| *k == op.kind).unwrap()] += 1;
            if op.kind == OpKind::Rotate {
                assert!((op.magnitude.abs() - 9.0).abs() < 1e-4, "bin 9 of 0..30 degrees: {}", op.magnitude);
                if op.magnitude > 0.0 {
                    positive += 1
                } else {
                    negative += 1
                }
            }
        }
    }
    assert!(counts.iter().all(|&n| (850..1150).contains(&n)), "each of 14 ops about 1,000 times: {counts:?}");
    assert!(positive > 400 && negative > 400, "signs: {positive} / {negative}");
}

#[test]
fn trivial_augment_draws_one_op_at_a_uniform_bin() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let policy = AutoAugment::TrivialAugment { num_magnitude_bins: 31 };
    let mut bins = [0usize; 31];
    for _ in 0..20000 {
        let ops = policy.sample(32, 32, &mut rng);
        assert_eq!(ops.len(), 1);
        if ops[0].kind == OpKind::Rotate {
            let bin = (ops[0].magnitude.abs() / 4.5).round() as usize;
            bins[bin] += 1;
        }
    }
    let total: usize = bins.iter().sum();
    assert!(total > 1200, "rotate is one op in 14: {total}");
    assert!(bins.iter().all(|&n| n > 0), "every bin of 0..135 degrees is reached: {bins:?}");
}

#[test]
fn policies_keep_the_size_and_zero_magnitude_is_the_identity() {
    let (_, input) = fixture();
    let mut rng = rand::rngs::StdRng::seed_from_u64(6);
    for policy in [AutoAugment::RAND_AUGMENT, AutoAugment::TrivialAugment { num_magnitude_bins: 31 }] {
        for _ in 0..50 {
            assert_eq!(policy.apply(&input, &mut rng).dimensions(), input.dimensions());
        }
    }
    for kind in [OpKind::ShearX, OpKind::TranslateY, OpKind::Rotate, OpKind::Brightness, OpKind::Sharpness] {
        assert_eq!(Op { kind, magnitude: 0.0 }.apply(&input), input, "{kind:?} at 0");
    }
    assert_eq!(Op { kind: OpKind::Posterize, magnitude: 8.0 }.apply(&input), input);
    assert_eq!(Op { kind: OpKind::Solarize, magnitude: 256.0 }.apply(&input), input);
}

#[test]
fn settings_are_read_and_checked() {
    let a: AutoAugment = serde_json::from_value(serde_json::json!({"policy": "rand_augment", "magnitude": 5})).unwrap();
    assert_eq!(a, AutoAugment::RandAugment { num_ops: 2, magnitude: 5, num_magnitude_bins: 31 });
    let t: AutoAugment = serde_json::from_value(serde_json::json!({"policy": "trivial_augment"})).unwrap();
    assert_eq!(t, AutoAugment::TrivialAugment { num_magnitude_bins: 31 });
    let typo = serde_json::from_value::<AutoAugment>(serde_json::json!({"policy": "rand_augment", "magnitud": 5}));
    assert!(typo.unwrap_err().to_string().contains("magnitud"));
    let (key, reason) =
        AutoAugment::RandAugment { num_ops: 2, magnitude: 31, num_magnitude_bins: 31 }.validate().unwrap_err();
    assert_eq!(key, "augment.auto_augment.magnitude");
    assert!(reason.contains("31"), "{reason}");
}
