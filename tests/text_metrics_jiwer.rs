//! jiwer 4.0.0 (from PyPI, in a throwaway environment) as the second client of kiln-infer's text metrics: it
//! scores freshly generated (reference, hypothesis) pairs with `scripts/jiwer_score.py`, and kiln's `TextScores`
//! must report the same corpus CER and WER and the same per-pair rates. Skipped with a printed reason where the
//! environment cannot be built; `KILN_REQUIRE_PYTHON=1` (`.ci/run`) makes that a failure.

use kiln_infer::TextScores;
use kiln_testkit::PythonEnv;
use rand::{Rng, SeedableRng};
use serde_json::Value;

const JIWER: [&str; 1] = ["jiwer==4.0.0"];

/// Characters the pairs are made of: letters, spaces, whitespace Python and Rust disagree on or that jiwer treats
/// specially (tab, newline, no-break space, U+001C), NFC and decomposed accents, ß, an emoji and digits.
const ALPHABET: &[char] =
    &['a', 'b', 'c', 'é', 'ß', 'ü', 'e', '\u{301}', '👍', '0', '7', ' ', ' ', ' ', '\t', '\n', '\u{a0}', '\u{1c}'];

/// `count` pairs from `seed`: references of 0-15 characters (a tenth of them empty), each hypothesis the
/// reference with 0-4 random substitutions, insertions and deletions.
fn random_pairs(seed: u64, count: usize) -> Vec<(String, String)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..count)
        .map(|_| {
            let len = if rng.random_bool(0.1) { 0 } else { rng.random_range(1..=15) };
            let reference: Vec<char> = (0..len).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())]).collect();
            let mut hypothesis = reference.clone();
            for _ in 0..rng.random_range(0..=4) {
                let c = ALPHABET[rng.random_range(0..ALPHABET.len())];
                match rng.random_range(0..3) {
                    _ if hypothesis.is_empty() => hypothesis.push(c),
                    0 => {
                        let i = rng.random_range(0..hypothesis.len());
                        hypothesis[i] = c;
                    }
                    1 => hypothesis.insert(rng.random_range(0..=hypothesis.len()), c),
                    _ => {
                        hypothesis.remove(rng.random_range(0..hypothesis.len()));
                    }
                }
            }
            (reference.into_iter().collect(), hypothesis.into_iter().collect())
        })
        .collect()
}

#[test]
fn jiwer_scores_pairs_as_kiln_does() {
    let test = "jiwer_scores_pairs_as_kiln_does";
    let Some(python) = PythonEnv::create_or_skip(test, "jiwer", &JIWER) else { return };
    let pairs = random_pairs(7, 400);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pairs.json");
    std::fs::write(&file, serde_json::to_string(&pairs).unwrap()).unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/jiwer_score.py");
    let out = python.run(&script, &[file.as_os_str()]).unwrap();
    let theirs: Value = serde_json::from_slice(&out.stdout).unwrap();

    let close = |ours: f64, theirs: &Value| (ours - theirs.as_f64().unwrap()).abs() < 1e-9;
    let per_pair = theirs["per_pair"].as_array().unwrap();
    assert_eq!(per_pair.len(), pairs.len());
    let mut scores = TextScores::default();
    for ((reference, hypothesis), jiwer) in pairs.iter().zip(per_pair) {
        let mut pair = TextScores::default();
        pair.add(reference, hypothesis);
        for (name, ours) in [("cer", pair.cer()), ("wer", pair.wer())] {
            assert!(close(ours, &jiwer[name]), "{name} of {reference:?} / {hypothesis:?}: {ours} vs jiwer {jiwer}");
        }
        scores.add(reference, hypothesis);
    }
    eprintln!("jiwer cer {} wer {}; kiln {:?}", theirs["cer"], theirs["wer"], scores.summary());
    assert!(close(scores.cer(), &theirs["cer"]), "cer {} vs jiwer {}", scores.cer(), theirs["cer"]);
    assert!(close(scores.wer(), &theirs["wer"]), "wer {} vs jiwer {}", scores.wer(), theirs["wer"]);
    assert!(scores.cer() > 0.05 && scores.wer() > 0.1, "a real comparison needs errors: {:?}", scores.summary());
}
