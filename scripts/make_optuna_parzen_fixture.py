#!/usr/bin/env python3
"""Generate the Optuna Parzen-estimator fixture for kiln-tune's TPE (`tune/tests/fixtures/optuna_parzen/cases.json`).

How it was made
---------------
kiln's TPE (`tune/src/sampler.rs`, `parzen.rs`) builds its good and bad densities as Optuna 5.0.0's
`TPESampler` does with its defaults (`prior_weight=1.0`, `consider_magic_clip=True`, `consider_endpoints=False`,
`default_weights`). To check it, this script

1. takes a few search spaces that together reach every kernel Optuna has: a uniform float, a log float, a stepped
   float, ints with step 1 and 16, a log int, a categorical; each alone (independent TPE) and all together
   (multivariate TPE), with observations drawn from a fixed seed (`SEED`), including 0 and 1 observations and 30
   observations (so that `default_weights` ramps the oldest ones down), and one case with `prior_weight=2`;
2. builds Optuna's own `_ParzenEstimator` on those observations (the object `TPESampler._sample` builds for the
   trials below and above the split), and evaluates its `log_pdf` at query points: on the observations, at the
   range ends, between them, and at points Optuna's own `sample` draws;
3. one change to Optuna's arithmetic: its estimator orders observations with numpy's default `argsort`
   (quicksort, SIMD-accelerated on AVX2 / AVX-512 machines), which puts tied observations in an order that
   depends on the CPU, and with ties the bandwidths (the outermost tied observation gets a different one) and so
   the densities depend on that order. The script gives the estimator a stable `argsort`, the order kiln uses,
   so that the numbers do not depend on the machine. Cases without tied observations come out the same either way;
   on the machine this was made on, 4 of the 40 cases (many observations on a grid) differ without the change;
4. writes the spaces (in kiln's search-space JSON), the observations and points (in Optuna's representation:
   the value itself for numbers, the choice's index for categoricals), the prior weight and the log densities.

`tests` in `tune/src/optuna_parity_tests.rs` build kiln's densities from the same observations and compare.

How to rerun
------------
From the repository root (PyPI is the only thing needed)::

    python3 -m venv /tmp/optuna-venv
    /tmp/optuna-venv/bin/pip install optuna==5.0.0
    /tmp/optuna-venv/bin/python scripts/make_optuna_parzen_fixture.py

`--out FILE` writes elsewhere (default `tune/tests/fixtures/optuna_parzen/cases.json`).
"""
import argparse
import json
import os

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
import optuna.samplers._tpe.parzen_estimator as parzen_estimator
from optuna.samplers._tpe.parzen_estimator import _ParzenEstimator, _ParzenEstimatorParameters
from optuna.samplers._tpe.sampler import default_weights

SEED = 20261203


class _StableArgsortNumpy:
    """numpy, except that `argsort` is stable (see point 3 above)."""

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def argsort(a, *args, **kwargs):
        return np.argsort(a, kind="stable")


parzen_estimator.np = _StableArgsortNumpy()

# name: (Optuna distribution, kiln's JSON for it)
SPACE = {
    "x": (FloatDistribution(-10.0, 10.0), {"type": "float", "low": -10.0, "high": 10.0}),
    "lr": (FloatDistribution(1e-5, 1e-1, log=True), {"type": "float", "low": 1e-5, "high": 1e-1, "log": True}),
    "drop": (FloatDistribution(0.0, 1.0, step=0.25), {"type": "float", "low": 0.0, "high": 1.0, "step": 0.25}),
    "layers": (IntDistribution(1, 8), {"type": "int", "low": 1, "high": 8}),
    "batch": (IntDistribution(16, 128, step=16), {"type": "int", "low": 16, "high": 128, "step": 16}),
    "width": (IntDistribution(1, 1024, log=True), {"type": "int", "low": 1, "high": 1024, "log": True}),
    "opt": (
        CategoricalDistribution(["adamw", "sgd", "adam", "lion"]),
        {"type": "categorical", "choices": ["adamw", "sgd", "adam", "lion"]},
    ),
}


def draw(rng, name, n):
    """n observations of parameter `name` in Optuna's representation, clustered so the kernels differ in width."""
    dist = SPACE[name][0]
    out = []
    for _ in range(n):
        u = rng.beta(2.0, 5.0)  # skewed towards the low end, with an occasional far one
        if isinstance(dist, CategoricalDistribution):
            out.append(float(min(int(u * len(dist.choices) * 1.6), len(dist.choices) - 1)))
        elif dist.log:
            v = float(np.exp(np.log(dist.low) + u * (np.log(dist.high) - np.log(dist.low))))
            out.append(float(min(max(round(v), dist.low), dist.high)) if isinstance(dist, IntDistribution) else v)
        else:
            v = dist.low + u * (dist.high - dist.low)
            if dist.step is not None:
                v = dist.low + round((v - dist.low) / dist.step) * dist.step
                v = min(max(v, dist.low), dist.high)
            out.append(float(v))
    return out


def edge_points(name):
    dist = SPACE[name][0]
    if isinstance(dist, CategoricalDistribution):
        return [float(i) for i in range(len(dist.choices))]
    if dist.step is not None or isinstance(dist, IntDistribution):
        step = dist.step or 1
        grid = np.arange(dist.low, dist.high + step / 2, step)
        if dist.log:
            grid = np.unique(np.round(np.exp(np.linspace(np.log(dist.low), np.log(dist.high), 9))))
        return [float(v) for v in grid]
    if dist.log:
        return [float(v) for v in np.exp(np.linspace(np.log(dist.low), np.log(dist.high), 7))]
    return [float(v) for v in np.linspace(dist.low, dist.high, 7)]


def case(rng, names, n, prior_weight=1.0):
    search_space = {k: SPACE[k][0] for k in names}
    observations = {k: np.asarray(draw(rng, k, n), dtype=float) for k in names}
    params = _ParzenEstimatorParameters(
        prior_weight=prior_weight,
        consider_magic_clip=True,
        consider_endpoints=False,
        weights=default_weights,
        multivariate=True,  # unused by Optuna 5.0's estimator
    )
    pe = _ParzenEstimator(observations, search_space, params)
    # Query points: the observations, Optuna's own samples, and for one parameter its edges and grid.
    points = {k: list(observations[k]) for k in names}
    sampled = pe.sample(np.random.RandomState(SEED), 8)
    for k in names:
        points[k] += [float(v) for v in sampled[k]]
    if len(names) == 1:
        points[names[0]] += edge_points(names[0])
    m = len(next(iter(points.values())))
    for k in names:  # pad the other dimensions by cycling their points
        points[k] = [points[k][i % len(points[k])] for i in range(m)]
    log_pdf = pe.log_pdf({k: np.asarray(v) for k, v in points.items()})
    return {
        "space": {k: SPACE[k][1] for k in names},
        "prior_weight": prior_weight,
        "observations": {k: [float(v) for v in observations[k]] for k in names},
        "points": points,
        "log_pdf": [float(v) for v in log_pdf],
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="tune/tests/fixtures/optuna_parzen/cases.json")
    args = parser.parse_args()
    rng = np.random.RandomState(SEED)
    cases = {}
    for name in SPACE:
        for n in (0, 1, 2, 7, 30):
            cases[f"{name}_{n}"] = case(rng, [name], n)
    cases["x_7_prior2"] = case(rng, ["x"], 7, prior_weight=2.0)
    cases["opt_7_prior2"] = case(rng, ["opt"], 7, prior_weight=2.0)
    for n in (3, 12, 30):
        cases[f"joint_{n}"] = case(rng, list(SPACE), n)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"optuna": optuna.__version__, "seed": SEED, "cases": cases}, f, indent=1)
        f.write("\n")
    print(f"wrote {len(cases)} cases to {args.out} (optuna {optuna.__version__})")


if __name__ == "__main__":
    main()
