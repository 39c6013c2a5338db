"""Time `re2tal evaluate` against the official ActivityNet detection evaluator on the same generated input.

    .venv/bin/python benchmarks/bench_evaluate.py --official /tmp/anet_official/eval_detection.py

The official file (activitynet/ActivityNet, Evaluation/eval_detection.py, with its utils.py beside it) is not part of
this project: fetch it yourself and pass its path. It is loaded with importlib and shimmed at import time only:
Python 2 sources are converted in memory with lib2to3, `urllib2` and a missing `joblib` get stand-ins, `np.float`
is restored, and its joblib pool (one process per class) is replaced by a serial loop so both sides use one core.
Without --official only our evaluator is timed.

The input is ActivityNet-sized by default: 4,700 validation videos (plus training videos the subset filter must
drop), 200 classes, 100 predictions per video, scores rounded to 3 decimals so ties occur and their order is tested.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
import types
import warnings
from pathlib import Path

import numpy as np

from re2tal_cli.evaluate import evaluate


def generate(out: Path, videos: int, classes: int, per_video: int, seed: int) -> tuple[Path, Path]:
    """ActivityNet-like ground truth (1-3 instances of one class per video, lengths over every bin) and predictions
    (half near the ground truth, half random, 20 % with another class, some for training videos)."""
    rng = np.random.default_rng(seed)
    labels = [f"class_{c:03d}" for c in range(classes)]
    database, results = {}, {}
    for v in range(videos + videos // 10):
        vid = f"v_{v:06d}"
        subset = "validation" if v < videos else "training"
        duration = float(rng.uniform(20, 400))
        label = labels[rng.integers(classes)]
        annotations = []
        for _ in range(rng.integers(1, 4)):
            length = min(duration, float(rng.choice([rng.uniform(1, 30), rng.uniform(30, 200)])))
            start = float(rng.uniform(0, duration - length))
            annotations.append({"segment": [round(start, 2), round(start + length, 2)], "label": label})
        database[vid] = {"subset": subset, "duration": duration, "annotations": annotations}
        if subset == "training" and v % 5:
            continue
        preds = []
        for k in range(per_video):
            if k % 2 == 0:
                s, e = annotations[k % len(annotations)]["segment"]
                s, e = s + rng.normal(0, 0.1 * (e - s)), e + rng.normal(0, 0.1 * (e - s))
            else:
                s = rng.uniform(0, duration)
                e = s + rng.uniform(0, duration - s)
            plabel = label if rng.random() < 0.8 else labels[rng.integers(classes)]
            seg = [round(max(float(s), 0.0), 2), round(max(float(e), 0.0), 2)]
            preds.append({"segment": seg, "label": plabel, "score": round(float(rng.random()), 3)})
        results[vid] = preds
    gt_path, pred_path = out / "gt.json", out / "pred.json"
    gt_path.write_text(json.dumps({"database": database, "taxonomy": [], "version": "bench"}))
    pred_path.write_text(json.dumps({"results": results, "version": "bench", "external_data": {}}))
    return gt_path, pred_path


def _source(path: Path) -> str:
    """The file's source, converted from Python 2 in memory when it does not compile as Python 3."""
    text = path.read_text()
    try:
        compile(text, str(path), "exec")
        return text
    except SyntaxError:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # lib2to3 is deprecated, still shipped with 3.11
            from lib2to3.refactor import RefactoringTool, get_fixers_from_package

        return str(RefactoringTool(get_fixers_from_package("lib2to3.fixes")).refactor_string(text, str(path)))


def _exec_module(name: str, path: Path, package: str) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__file__, module.__package__ = str(path), package
    sys.modules[name] = module
    exec(compile(_source(path), str(path), "exec"), module.__dict__)
    return module


def load_official(path: Path) -> types.ModuleType:
    """Import the official eval_detection.py (and the utils.py beside it) with the shims described above."""
    if not hasattr(np, "float"):
        np.float = float  # removed in NumPy 1.24, used by the official cumsum
    sys.modules.setdefault("urllib2", types.ModuleType("urllib2"))
    if importlib.util.find_spec("joblib") is None:
        shim = types.ModuleType("joblib")
        shim.Parallel, shim.delayed = None, None
        sys.modules["joblib"] = shim
    package = types.ModuleType("anet_official")
    package.__path__ = [str(path.parent)]
    sys.modules["anet_official"] = package
    utils = _exec_module("anet_official.utils", path.parent / "utils.py", "anet_official")
    sys.modules["utils"] = utils  # the Python 2 file imports it absolutely, the Python 3 one relatively
    official = _exec_module("anet_official.eval_detection", path, "anet_official")

    def serial_parallel(n_jobs: int | None = None, **_: object):
        return lambda tasks: [fn(*args, **kwargs) for fn, args, kwargs in tasks]

    def delayed(fn):
        return lambda *args, **kwargs: (fn, args, kwargs)

    official.Parallel, official.delayed = serial_parallel, delayed
    return official


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official", type=Path, help="path to the official eval_detection.py (utils.py beside it)")
    parser.add_argument("--videos", type=int, default=4700)
    parser.add_argument("--classes", type=int, default=200)
    parser.add_argument("--per-video", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3, help="runs of ours (the best is kept); official runs once")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        gt_path, pred_path = generate(Path(tmp), args.videos, args.classes, args.per_video, args.seed)
        n_pred = sum(len(v) for v in json.loads(pred_path.read_text())["results"].values())
        print(f"input: {args.videos} validation videos, {args.classes} classes, {n_pred} predictions")

        ours_s = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            ours = evaluate(gt_path, pred_path, protocol="anet", subset="validation")
            ours_s.append(time.perf_counter() - t0)
        print(
            f"re2tal:   {min(ours_s):8.2f} s  average mAP {ours.average_mAP:.6f}"
            f"  (files to result, best of {args.repeat})"
        )
        if args.official is None:
            print("official: not timed (pass --official PATH/eval_detection.py to compare)")
            return

        official = load_official(args.official)
        t0 = time.perf_counter()
        anet = official.ANETdetection(
            str(gt_path),
            str(pred_path),
            tiou_thresholds=np.linspace(0.5, 0.95, 10),
            subset="validation",
            verbose=False,
            check_status=False,
        )
        anet.evaluate()
        official_s = time.perf_counter() - t0
        print(f"official: {official_s:8.2f} s  average mAP {anet.average_mAP:.6f}  (files to result, serial)")
        order = [anet.activity_index[label] for label in ours.labels]
        diff = max(float(np.abs(anet.ap[:, order] - ours.ap).max()), float(np.abs(anet.mAP - ours.mAP).max()))
        print(
            f"speed-up: {official_s / min(ours_s):.1f}x   max |official - re2tal| over AP per class and mAP: {diff:.2e}"
        )


if __name__ == "__main__":
    main()
