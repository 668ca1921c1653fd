//! The parity tests' comparison can fail: a NaN on either side, an all-NaN output and a length mismatch never pass
//! as a match (the helpers they replaced let all three through).

// `!(diff <= bound)` is the point: how the parity tests' bounds treat a NaN difference.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

mod common;

use common::{max_abs_diff, max_rel_diff};

#[test]
fn a_nan_anywhere_fails_every_bound() {
    let reference = [0.25f32, -1.0, 3.0];
    assert_eq!(max_abs_diff(&reference, &[0.25, -1.0, 3.5]), 0.5);
    for got in [[f32::NAN, -1.0, 3.0], [0.25, -1.0, f32::NAN], [f32::NAN; 3]] {
        let diff = max_abs_diff(&reference, &got);
        assert!(!(diff <= 1e9), "{got:?} passed with {diff}");
        assert!(!(max_rel_diff(&reference, &got) < 1e9));
    }
    assert!(!(max_abs_diff(&[f32::NAN], &[0.0]) <= 1.0), "a NaN reference fails too");
}

#[test]
fn large_values_compare_relatively() {
    assert_eq!(max_rel_diff(&[200.0, 0.5], &[202.0, 0.5]), 0.01);
    assert_eq!(max_rel_diff(&[0.5], &[0.75]), 0.25, "below 1, absolutely");
}

#[test]
#[should_panic(expected = "differ in length")]
fn a_shorter_output_is_not_compared_as_a_prefix() {
    max_abs_diff(&[1.0, 2.0, 3.0], &[1.0, 2.0]);
}

#[test]
#[should_panic(expected = "nothing to compare")]
fn an_empty_output_is_not_a_match() {
    max_abs_diff(&[], &[]);
}
