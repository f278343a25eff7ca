"""Benchmark: streaming detection on the simulated packaging line, one row at a time as live, beside river's HalfSpaceTrees.

Both learn from the same simulated normal history, get a threshold for the same target false-alarm
rate on held-out normal running, and then see the same stream: every standard fault scenario
plus a normal shift. Printed: rows per second for each (ours through the full DetectStation row
path: checks + multivariate detector, and with the fault classifier on the row's signature alone and
on the windowed signature that reads the course; HalfSpaceTrees: score_one), row-level precision/recall/F1.

    .venv/bin/python bench/detect.py [--normal-hours 16]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
from river import anomaly, compose, preprocessing

from factory_copilot.config import SIMULATED_LINE, load_line
from factory_copilot.detect import DetectStation
from factory_copilot.detect.classify import WINDOW_LAGS
from factory_copilot.detect.evaluate import SIM_DETECTOR, train_models
from factory_copilot.simulated import simulated_line
from simulators import modes, normal_runs, simulate_frame, standard_scenarios


def frames(line, runs):
    return [simulate_frame(line, seed=r.seed, duration_s=r.duration_s, schedule=r.schedule, scenarios=r.scenarios) for r in runs]


def f1(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float, float]:
    tp = np.sum(pred & truth)
    p = tp / max(pred.sum(), 1)
    r = tp / max(truth.sum(), 1)
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--normal-hours", type=float, default=16.0, help="simulated normal history to learn from")
    args = ap.parse_args()
    line = load_line(SIMULATED_LINE)
    keys = line.signal_keys()
    n_shifts = int(np.ceil(args.normal_hours / 8))
    history = pd.concat([f.reset_index(drop=True) for f in frames(line, [r for i in range(n_shifts)
                         for r in normal_runs(seed=300 + i, hours=8)])], ignore_index=True)
    held_out = frames(line, normal_runs(seed=399, hours=8))[0]
    stream = frames(line, standard_scenarios(seed=5) + normal_runs(seed=398, hours=8))
    print(f"line: {len(keys)} signals; history {len(history)} rows; stream {sum(len(f) for f in stream)} rows")

    t0 = time.perf_counter()
    models = train_models(line, history, detector_params=SIM_DETECTOR, progress=False)
    print(f"ours: trained in {time.perf_counter() - t0:.1f} s")
    # the classifier learns from labelled faults: the simulated history `evaluate` trains on
    labelled = simulated_line().simulated_history(line, seed=1)
    named = {name: train_models(line, labelled, detector_params=SIM_DETECTOR, classifier_params={"lags": lags},
                                progress=False) for name, lags in (("snapshot", ()), ("windowed", WINDOW_LAGS))}

    # HalfSpaceTrees: min-max scaled signals plus the mode code, learnt on the same history
    hst = compose.Pipeline(preprocessing.MinMaxScaler(), anomaly.HalfSpaceTrees(n_trees=25, height=15, window_size=250, seed=0))
    t0 = time.perf_counter()
    train = history[keys].to_numpy()
    train_modes = [modes.code(m) for m in history["mode"]]
    for x, m in zip(train[::2], train_modes[::2]):  # every other row: HST learning is slow and rows are 1 s apart
        hst.learn_one({**dict(zip(keys, x)), "mode": m})
    print(f"HalfSpaceTrees: learnt in {time.perf_counter() - t0:.1f} s")
    # its threshold: the same target false-alarm rate on held-out normal running
    held = np.array([hst.score_one({**dict(zip(keys, x)), "mode": modes.code(m)})
                     for x, m in zip(held_out[keys].to_numpy(), held_out["mode"])])
    threshold = float(np.quantile(held, 1 - SIM_DETECTOR["false_alarm_rate"]))

    ours_pred, hst_scores, truth = [], [], []
    ours_s = hst_s = det_s = 0.0
    named_s = dict.fromkeys(named, 0.0)
    for frame in stream:
        station = DetectStation(line, detector=models.detector, checks=models.checks(line))
        values = frame[keys].to_numpy()
        row_modes = [modes.named(m) for m in frame["mode"]]
        ts = frame.index.to_numpy(dtype=float)
        rows = [dict(zip(keys, v)) for v in values]
        t0 = time.perf_counter()
        for i, row in enumerate(rows):
            station.mode = row_modes[i]
            ours_pred.append(bool(station.evaluate(ts[i], row, {})))
        ours_s += time.perf_counter() - t0
        for name, m in named.items():  # the same row path with the fault classifier: its signature per row
            st = DetectStation(line, detector=m.detector, classifier=m.classifier, checks=m.checks(line))
            t0 = time.perf_counter()
            for i, row in enumerate(rows):
                st.mode = row_modes[i]
                st.evaluate(ts[i], row, {})
            named_s[name] += time.perf_counter() - t0
        det = models.detector.stream()  # the multivariate model alone, for a model-to-model speed figure
        t0 = time.perf_counter()
        for v, m in zip(values, row_modes):
            det.update(v, m)
        det_s += time.perf_counter() - t0
        feats = [{**row, "mode": modes.code(m)} for row, m in zip(rows, row_modes)]
        t0 = time.perf_counter()
        for f in feats:
            hst_scores.append(hst.score_one(f))
        hst_s += time.perf_counter() - t0
        truth.extend(frame["fault"].astype(str) != "normal")
    truth = np.array(truth)
    hst_scores = np.array(hst_scores)
    n = len(truth)
    ours_rate, hst_rate, det_rate = n / ours_s, n / hst_s, n / det_s
    po, ro, fo = f1(np.array(ours_pred), truth)
    ph, rh, fh = f1(hst_scores > threshold, truth)
    # HalfSpaceTrees' best case: the threshold that maximises its F1 on this very stream (an oracle)
    best = max((f1(hst_scores > q, truth) + (q,) for q in np.quantile(hst_scores, np.linspace(0.01, 0.999, 200))),
               key=lambda r: r[2])
    print(f"{'':30s} {'rows/s':>9s} {'precision':>9s} {'recall':>7s} {'F1':>6s}")
    print(f"{'DetectStation (checks+model)':30s} {ours_rate:9.0f} {po:9.3f} {ro:7.3f} {fo:6.3f}")
    for name, sec in named_s.items():
        print(f"{'  + classifier, ' + name:30s} {n / sec:9.0f}")
    print(f"{'LineDetector stream alone':30s} {det_rate:9.0f}")
    print(f"{'HalfSpaceTrees (score_one)':30s} {hst_rate:9.0f} {ph:9.3f} {rh:7.3f} {fh:6.3f}   same false-alarm target")
    print(f"{'HalfSpaceTrees, oracle limit':30s} {'':9s} {best[0]:9.3f} {best[1]:7.3f} {best[2]:6.3f}   threshold tuned on the test stream")
    print(f"detect: {ours_rate:.0f} rows/s ({ours_rate / hst_rate:.1f}x HalfSpaceTrees), F1 {fo:.3f} vs {fh:.3f}; "
          f"with classifier {n / named_s['snapshot']:.0f} (snapshot) vs {n / named_s['windowed']:.0f} (windowed) rows/s")


if __name__ == "__main__":
    main()
