#!/usr/bin/env python3
"""Generate the jiwer parity fixture for kiln-infer's `text_metrics` (`tests/fixtures/jiwer/cases.json`).

How it was made
---------------
kiln's `TextScores` (infer/src/text_metrics.rs) implements CER and WER as jiwer 4.0.0 defines them with its
default transforms (`cer_default`: strip, then characters; `wer_default`: collapse whitespace runs, strip,
split on spaces). To check it, this script

1. takes hand-picked edge cases (`EDGE_CASES` below: whitespace runs, tabs and no-break spaces, Python-only
   whitespace, empty references and hypotheses, NFC characters such as é, ß, ü, a decomposed é, an emoji,
   barcode-like digit lines) plus `RANDOM_PAIRS` seeded random pairs over a small alphabet with spaces (the
   hypothesis an edited copy of the reference, so the distances are small and varied),
2. scores them with real jiwer (`scripts/jiwer_score.py`): the corpus-level `jiwer.cer` and `jiwer.wer` over all
   pairs, and each pair's own `cer` and `wer`,
3. computes the two numbers jiwer has no function for, on jiwer's own CER transform and alignment: exact-match
   accuracy (the `cer_default`-transformed character lists are equal) and the mean normalised edit distance
   (`jiwer.process_characters`' substitutions + deletions + insertions, divided by the longer transformed length,
   0 when both are empty),
4. writes everything to `cases.json` with the jiwer version.

How to rerun
------------
From the repository root (PyPI is the only thing needed)::

    python3 -m venv /tmp/jiwer-venv
    /tmp/jiwer-venv/bin/pip install jiwer==4.0.0
    /tmp/jiwer-venv/bin/python scripts/make_jiwer_fixture.py

Options: `--out FILE` (default `tests/fixtures/jiwer/cases.json`); `--seed N` makes other random pairs (the
committed fixture uses the default).
"""
import argparse
import json
import os
import random
import sys
from importlib.metadata import version

import jiwer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from jiwer_score import score  # noqa: E402

SEED = 20240611
RANDOM_PAIRS = 50
ALPHABET = "abcde  "

EDGE_CASES = [
    ("hello world", "hello world"),
    ("hello world", "hallo world"),
    ("hello world", "hello  world"),
    ("  hello world  ", "hello world"),
    ("hello world", "helloworld"),
    ("a b c", "a\tb c"),
    ("a\tb c", "a b c"),
    ("a \tb", "a b"),
    ("a\u00a0b", "a b"),
    ("a\u001cb", "a b"),
    ("\u001cab\u001f", "ab"),
    ("line\none", "line one"),
    ("", ""),
    ("", "abc"),
    ("", "a b"),
    ("   ", "x"),
    ("abc", ""),
    ("stra\u00dfe", "strasse"),
    ("caf\u00e9", "cafe"),
    ("cafe\u0301", "caf\u00e9"),
    ("\u00fcber gr\u00fc\u00dfe", "uber grusse"),
    ("ok \U0001f44d", "ok \U0001f44e"),
    ("\U0001f600", ""),
    ("4006381333931", "4006381333931"),
    ("4006381333931", "4006881333931"),
    ("036000291452", "03600029145"),
    ("0123 4567 89", "0123 4567 89 0"),
]


def random_pairs(seed, count):
    """`count` (reference, hypothesis) pairs: random references of 0-12 characters over `ALPHABET`, each
    hypothesis the reference with a few random substitutions, insertions and deletions."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(count):
        reference = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 12)))
        hypothesis = list(reference)
        for _ in range(rng.randint(0, 3)):
            edit = rng.choice(["substitute", "insert", "delete"])
            if edit == "insert" or not hypothesis:
                hypothesis.insert(rng.randint(0, len(hypothesis)), rng.choice(ALPHABET))
            elif edit == "substitute":
                hypothesis[rng.randrange(len(hypothesis))] = rng.choice(ALPHABET)
            else:
                del hypothesis[rng.randrange(len(hypothesis))]
        pairs.append((reference, "".join(hypothesis)))
    return pairs


def exact_and_normalised(reference, hypothesis):
    """Whether the pair matches exactly, and its normalised edit distance, on jiwer's CER transform."""
    ref_chars = jiwer.cer_default(reference)[0]
    hyp_chars = jiwer.cer_default(hypothesis)[0]
    out = jiwer.process_characters(reference, hypothesis)
    distance = out.substitutions + out.deletions + out.insertions
    longer = max(len(ref_chars), len(hyp_chars))
    return ref_chars == hyp_chars, distance / longer if longer else 0.0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="tests/fixtures/jiwer/cases.json")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args()

    pairs = EDGE_CASES + random_pairs(args.seed, RANDOM_PAIRS)
    scored = score(pairs)
    per_pair = [exact_and_normalised(reference, hypothesis) for reference, hypothesis in pairs]
    fixture = {
        "jiwer_version": version("jiwer"),
        "seed": args.seed,
        "cer": scored["cer"],
        "wer": scored["wer"],
        "exact_match": sum(exact for exact, _ in per_pair) / len(pairs),
        "mean_ned": sum(ned for _, ned in per_pair) / len(pairs),
        "cases": [
            {"reference": reference, "hypothesis": hypothesis, "cer": own["cer"], "wer": own["wer"]}
            for (reference, hypothesis), own in zip(pairs, scored["per_pair"])
        ],
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    # One case per line, so that a change shows as a readable diff.
    cases = ",\n".join("  " + json.dumps(case) for case in fixture.pop("cases"))
    head = json.dumps(fixture, indent=1)[:-2]
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(f'{head},\n "cases": [\n{cases}\n ]\n}}\n')
    print(f"{args.out}: {len(pairs)} pairs, cer {fixture['cer']:.6f}, wer {fixture['wer']:.6f}")


if __name__ == "__main__":
    main()
