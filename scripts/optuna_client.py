#!/usr/bin/env python3
"""Real Optuna as a second client of a kiln study (used by tests/optuna_interop.rs; also handy by hand).

  optuna_client.py create URL                    creates Optuna's schema in an empty database
  optuna_client.py read URL STUDY                prints the study as Optuna sees it (JSON)
  optuna_client.py add URL STUDY N SEED SPACE    runs N trials of Optuna's TPE on kiln's search space (JSON)
  optuna_client.py enqueue URL STUDY PARAMS [N]  enqueues a trial (N trials) with fixed parameters (JSON)
  optuna_client.py pop-waiting URL STUDY N READY runs enqueued trials as an Optuna worker does (`study.ask()` pops
                                                 the oldest WAITING trial) until ask() makes a new one (number
                                                 >= N, told FAIL); touches the file READY once the study is loaded;
                                                 prints the numbers it ran (JSON)
  optuna_client.py fail-stale URL STUDY GRACE    Optuna's stale-trial check (heartbeats older than GRACE s); prints
                                                 the numbers of the study's FAIL trials

URL is kiln's form: sqlite:///FILE or postgres://USER@HOST:PORT/DB (opened with psycopg 3).
The objective of `add` is a made-up smooth function of the parameters, so that TPE has something to model; its
values lie above 1, so a trial Optuna added is the best of a study of kiln's accuracies.
"""

import json
import math
import sys

import optuna
from optuna.distributions import distribution_to_json

optuna.logging.set_verbosity(optuna.logging.WARNING)


def storage(url, **options):
    if url.startswith("postgres://") or url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    return optuna.storages.RDBStorage(url, **options)


def finite(v):
    return v if v is None or math.isfinite(v) else str(v)


def read(url, name):
    study = optuna.load_study(study_name=name, storage=storage(url))
    trials = []
    for t in study.get_trials(deepcopy=False):
        trials.append({
            "number": t.number,
            "state": t.state.name,
            "value": finite(t.value) if t.values is not None else None,
            "params": t.params,
            "distributions": {k: json.loads(distribution_to_json(d)) for k, d in t.distributions.items()},
            "intermediate": {str(s): finite(v) for s, v in t.intermediate_values.items()},
            "user_attrs": t.user_attrs,
            "system_attrs": t.system_attrs,
            "started": t.datetime_start.timestamp() if t.datetime_start else None,
        })
    complete = [t for t in trials if t["state"] == "COMPLETE"]
    out = {
        "direction": study.direction.name,
        "trials": trials,
        "best_params": study.best_params if complete else None,
        "best_number": study.best_trial.number if complete else None,
        "importances": optuna.importance.get_param_importances(study) if len(complete) >= 2 else {},
        "study_attrs": study._storage.get_study_system_attrs(study._study_id),
    }
    print(json.dumps(out))


def suggest(trial, name, d):
    kind = d["type"]
    if kind == "float":
        return trial.suggest_float(name, d["low"], d["high"], log=d.get("log", False), step=d.get("step"))
    if kind == "int":
        return trial.suggest_int(name, d["low"], d["high"], step=d.get("step", 1), log=d.get("log", False))
    return trial.suggest_categorical(name, d["choices"])


def add(url, name, n, seed, space):
    sampler = optuna.samplers.TPESampler(seed=seed)
    study = optuna.load_study(study_name=name, storage=storage(url), sampler=sampler)

    def objective(trial):
        value = 1.5
        for key, d in sorted(space.items()):
            x = suggest(trial, key, d)
            if isinstance(x, (int, float)) and not isinstance(x, bool):
                value -= 0.01 * math.log(abs(float(x)) + 1.0)
            trial.report(value, 1)
        return value

    study.optimize(objective, n_trials=n)


def pop_waiting(url, name, n, ready):
    study = optuna.load_study(study_name=name, storage=storage(url))
    study.get_trials(deepcopy=False)  # connected and warm before the kiln workers start
    open(ready, "w").close()
    ran = []
    while True:
        trial = study.ask()
        if trial.number >= n:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            break
        ran.append(trial.number)
        try:
            study.tell(trial, 0.0)
        except Exception:  # another worker ran it too and finished it first: the test counts it twice
            pass
    print(json.dumps(ran))


def main(argv):
    command, url = argv[1], argv[2]
    if command == "create":
        storage(url)
    elif command == "read":
        read(url, argv[3])
    elif command == "add":
        add(url, argv[3], int(argv[4]), int(argv[5]), json.loads(argv[6]))
    elif command == "enqueue":
        study = optuna.load_study(study_name=argv[3], storage=storage(url))
        for _ in range(int(argv[5]) if len(argv) > 5 else 1):
            study.enqueue_trial(json.loads(argv[4]), skip_if_exists=False)
    elif command == "pop-waiting":
        pop_waiting(url, argv[3], int(argv[4]), argv[5])
    elif command == "fail-stale":
        beating = storage(url, heartbeat_interval=1, grace_period=int(argv[4]))
        study = optuna.load_study(study_name=argv[3], storage=beating)
        optuna.storages.fail_stale_trials(study)
        failed = [t.number for t in study.get_trials() if t.state == optuna.trial.TrialState.FAIL]
        print(json.dumps(failed))
    else:
        sys.exit(f"unknown command {command}")


if __name__ == "__main__":
    main(sys.argv)
