#!/usr/bin/env python3
"""Compares kiln's fANOVA importances with Optuna's on one kiln study directory (its trials.csv and importances.json).

Needs `pip install optuna scikit-learn` (checked with optuna 5.0.0, scikit-learn 1.9.1). The search space below is
kiln's default classification space; edit it for a study with another. Usage:
    python3 scripts/compare_fanova_optuna.py runs/classify/STUDY
"""
import csv, json, sys, optuna
from optuna.distributions import FloatDistribution, CategoricalDistribution
from optuna.importance import FanovaImportanceEvaluator
optuna.logging.set_verbosity(optuna.logging.ERROR)
d = sys.argv[1]
space = {"lr": FloatDistribution(1e-4, 1e-2, log=True), "weight_decay": FloatDistribution(1e-4, 1e-1, log=True),
         "batch": CategoricalDistribution([16, 32, 64]), "drop_path_rate": FloatDistribution(0.0, 0.3),
         "augment.color_jitter": FloatDistribution(0.0, 0.4)}
study = optuna.create_study(direction="maximize")
for row in csv.DictReader(open(f"{d}/trials.csv")):
    if row["state"] != "COMPLETE":
        continue
    study.add_trial(optuna.trial.create_trial(params=json.loads(row["params"]), distributions=space, value=float(row["value"])))
res = {}
for seed in range(5):
    for k, v in optuna.importance.get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=seed)).items():
        res.setdefault(k, []).append(v)
kiln = json.load(open(f"{d}/importances.json"))
print("| parameter | kiln | optuna (mean of 5 seeds) | optuna range |")
for k in sorted(kiln, key=lambda k: -kiln[k]):
    print(f"| {k} | {kiln[k]:.3f} | {sum(res[k])/5:.3f} | {min(res[k]):.3f}-{max(res[k]):.3f} |")
