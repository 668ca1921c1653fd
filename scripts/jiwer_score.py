#!/usr/bin/env python3
"""Score (reference, hypothesis) pairs with jiwer, the reference implementation of CER and WER.

Usage: jiwer_score.py PAIRS.json

PAIRS.json is a JSON list of [reference, hypothesis] pairs. Prints one JSON object: jiwer's corpus-level
`cer` and `wer` over all pairs (its default transforms), and `per_pair`, one {"cer", "wer"} per pair.

Needs `pip install jiwer==4.0.0` (tests/text_metrics_jiwer.rs builds a throwaway environment with it);
scripts/make_jiwer_fixture.py uses `score` too.
"""
import json
import sys

import jiwer


def score(pairs):
    """jiwer's corpus-level CER and WER of `pairs` and each pair's own."""
    references = [reference for reference, _ in pairs]
    hypotheses = [hypothesis for _, hypothesis in pairs]
    return {
        "cer": float(jiwer.cer(references, hypotheses)),
        "wer": float(jiwer.wer(references, hypotheses)),
        "per_pair": [
            {"cer": float(jiwer.cer(reference, hypothesis)), "wer": float(jiwer.wer(reference, hypothesis))}
            for reference, hypothesis in pairs
        ],
    }


def main(path):
    with open(path, encoding="utf-8") as f:
        pairs = json.load(f)
    json.dump(score(pairs), sys.stdout)
    print()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
