"""The `train` and `evaluate` sub-commands: fit detect models from history, and measure them on simulated faults and TEP."""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from factory_copilot.cli import report_command
from factory_copilot.config import SIMULATED_LINE, load_line
from factory_copilot.simulated import simulated_line

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)


HISTORY_DOC = "docs/history.md"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="learn a line's normal and its fault signatures from history; save the models",
        description="Learn a line's normal (per operating mode, judged at its operating point) and its fault "
                    "signatures from recorded history. Checks the false-alarm rate on the end of every normal "
                    "stretch held out of the fit, widens the threshold where the target is missed, and reports "
                    "how much history each mode or regime has.",
        epilog=f"History formats (CSV, Parquet, JSON lines; columns, mode, labels, runs): {HISTORY_DOC} "
               "(in the repository and on the project's page).")
    p.add_argument("--line", "--config", dest="line", default=str(SIMULATED_LINE),
                   help="line file (default: the simulated packaging line)")
    p.add_argument("--history", nargs="*", default=[], metavar="FILE",
                   help="CSV or Parquet exports (one column per 'asset.signal', optional 'ts', 'mode', 'fault' and "
                        f"'run' columns) or recorded readings as JSON lines (.jsonl); see {HISTORY_DOC}")
    p.add_argument("--simulate", action="store_true", help="generate the training history with the line simulator")
    p.add_argument("--normal-hours", type=float, default=24.0, help="simulated normal running to train on (default 24)")
    p.add_argument("--false-alarm-rate", type=float, default=1e-4, help="target share of falsely flagged rows (default 1e-4)")
    p.add_argument("--persistence", type=int, default=3, help="consecutive rows past the threshold to flag (default 3)")
    p.add_argument("--out", help="model file to write (default: where `run` reads it, the line file's "
                                 "service.detector or <state_dir>/detector.joblib)")
    p.set_defaults(func=train_command)
    report_command(p)

    r = sub.add_parser("retune", help="raise the detector's thresholds from alarms operators marked false")
    r.add_argument("--config", required=True, help="the line file the service runs (its service section names the files)")
    r.add_argument("--state-dir", help="override the line file's service.state_dir (the demo's is var/demo)")
    r.add_argument("--since-hours", type=float, default=30 * 24, help="false alarms marked within this many hours (default 30 days)")
    r.add_argument("--max-raise", type=float, default=1.5, help="largest factor on a mode's threshold per retune (default 1.5)")
    r.add_argument("--margin", type=float, default=1.05, help="how far past a false alarm's peak score (default 1.05)")
    r.add_argument("--actor", help="who retunes (recorded in the model file)")
    r.add_argument("--dry-run", action="store_true", help="report what would change; write nothing")
    r.set_defaults(func=retune_command)

    e = sub.add_parser(
        "evaluate", help="detection delay, precision/recall/F1, false alarms, fault naming; sim and TEP (with the "
                         "alarm KPIs, EEMUA 191, on the simulated line), or your own recording",
        description="Without --history: the simulated line's fault scenarios and TEP. With --history: the trained "
                    "detector replayed on a labelled recording of your line, row by row as live.",
        epilog=f"History formats: {HISTORY_DOC}.")
    e.add_argument("--line", "--config", dest="line", default=str(SIMULATED_LINE),
                   help="line file (default: the simulated line)")
    e.add_argument("--history", metavar="FILE", help="a labelled recording of the line (CSV or Parquet with a label "
                                                     "column; a JSON-lines reading stream carries no labels)")
    e.add_argument("--labels", metavar="COLUMN", default="fault",
                   help="the recording's label column: 'normal', 0, false or empty for normal rows, anything else "
                        "(a fault name, 1, true) for a fault (default: fault)")
    e.add_argument("--baselines-on", nargs="+", metavar="FILE",
                   help="with --history: healthy history to fit PCA T2+Q and IsolationForest on, scored beside the "
                        "detector (default: the files `train` read, as the model file records them)")
    e.add_argument("--no-baselines", action="store_true", help="with --history: do not run the baselines")
    e.add_argument("--only", choices=["sim", "tep"], help="run only the simulated line or only TEP")
    e.add_argument("--tep", metavar="DIR", help="the Tennessee Eastman set's folder (d00.dat..d21.dat; default: "
                                                "$FACTORY_COPILOT_TEP; without either, TEP is skipped)")
    e.add_argument("--tep-test", metavar="DIR", help="the Tennessee Eastman test set's folder (d00_te.dat..d21_te.dat), "
                                                     "scored by the benchmark's standard protocol beside the blocked CV "
                                                     "(default: the --tep folder, if it holds d01_te.dat)")
    e.add_argument("--models", help="trained model file (default with --history: where `run` reads it; "
                                    "without: train afresh from simulated history)")
    e.add_argument("--normal-hours", type=float, default=16.0, help="hours of simulated normal running to count false alarms on")
    e.add_argument("--out", default="eval", help="directory for results.json and results.png (default eval/)")
    e.set_defaults(func=evaluate_command)
    report_command(e)
    from factory_copilot.copilot.evaluate import (
        add_arguments as copilot_arguments,  # evaluate --copilot
    )

    copilot_arguments(e)


def readings_table(readings: pd.DataFrame, line) -> pd.DataFrame:
    """A recorded Reading stream (ts, asset, signal, value, quality) as rows per sampling interval, as the station sees it."""
    import pandas as pd  # as read_history: not at the top

    from factory_copilot.plumbing.history import epoch_seconds

    missing = {"ts", "asset", "signal", "value"} - set(readings.columns)
    if missing:
        raise ValueError(f"recorded readings lack field(s) {', '.join(sorted(missing))}")
    r = readings
    if "quality" in r.columns:
        r = r[r["quality"].fillna("good").astype(str).str.lower() == "good"]  # only good values are process values
    seconds = pd.Series(epoch_seconds(r["ts"], where="recorded readings' field 'ts'"), index=r.index)
    r = r.dropna(subset=["value"]).assign(
        key=r["asset"].astype(str) + "." + r["signal"].astype(str),
        seconds=seconds,
        row=(seconds // line.sampling_interval_s).astype("int64"),
    )
    table = r.sort_values("seconds", kind="stable").pivot_table(index="row", columns="key", values="value", aggfunc="last")
    table = table.reindex(range(table.index.min(), table.index.max() + 1)).ffill()
    if line.modes and line.modes.codes is not None and line.mode_key in table.columns:
        # a coded mode signal becomes the mode column, by name (a load signal of ranges stays a signal)
        from factory_copilot.detect.operating import row_modes

        table["mode"] = row_modes(line, table[[line.mode_key]])
        table = table.drop(columns=[line.mode_key])
    table.index = table.index * line.sampling_interval_s
    return table.reset_index(drop=True)


def read_history(paths: list[str], line=None) -> pd.DataFrame:
    """Concatenate history exports; each file (and each 'run' within a file) is its own run, so causal
    smoothing restarts between them.

    CSV/Parquet: one column per 'asset.signal'. JSON lines (.jsonl): a recorded stream of readings.
    The formats are described in docs/history.md.
    """
    # pandas here, not at the top: every command's module is imported to build the command line, the service's too
    import pandas as pd

    frames = []
    offset = 0
    for path in paths:
        from factory_copilot.plumbing.history import read_table  # the one reader of train, evaluate and replay

        p = Path(path)
        try:
            df = read_table(p)
            if p.suffix.lower() in (".jsonl", ".ndjson"):
                df = readings_table(df, line)
        except ValueError as exc:
            raise SystemExit(f"error: {exc}") from None
        runs = pd.factorize(df["run"])[0] if "run" in df.columns else np.zeros(len(df), dtype=int)
        frames.append(df.assign(run=runs + offset))
        offset += int(runs.max()) + 1 if len(df) else 1
    return pd.concat(frames, ignore_index=True)


def train_command(args: argparse.Namespace) -> int:
    from factory_copilot.config import ServicePaths
    from factory_copilot.detect.evaluate import train_models
    from factory_copilot.detect.persist import save_detector

    line = load_line(args.line)
    if not args.history and not args.simulate:
        print(f"error: give --history FILE... or --simulate (history formats: {HISTORY_DOC})", file=sys.stderr)
        return 2
    history = read_history(args.history, line) if args.history else simulated_line().simulated_history(line, normal_hours=args.normal_hours)
    try:
        models = train_models(line, history, detector_params={
            "false_alarm_rate": args.false_alarm_rate, "persistence": args.persistence})
    except ValueError as exc:
        source = ", ".join(args.history) if args.history else "the simulated history"
        print(f"error: {exc} (in {source})", file=sys.stderr)
        return 2
    if args.history:
        # evaluate fits its baselines (PCA T2+Q, IsolationForest) on the same history, if it is still there
        models.metadata["history_files"] = [str(Path(p).resolve()) for p in args.history]
    out = Path(args.out) if args.out else ServicePaths.of_line(line, Path(args.line)).detector
    path = save_detector(out, models)
    det = models.detector
    print(f"trained on {len(history)} rows ({models.metadata['normal_rows']} normal)" + (f"; modes {', '.join(det.models_)}" if line.modes else "")
          + (f"; fault classes {', '.join(map(str, models.classifier.classes_))}" if models.classifier else "; no fault labels"))
    target = det.false_alarm_rate
    print(f"false-alarm target {target:g} of rows (persistence {det.persistence}); checked on the held-out later half "
          f"of every normal stretch:")
    for text in models.metadata["coverage"]:
        print(f"  {text}")
    flat = models.metadata.get("flat_in_normal")
    if flat:
        # not "constant": a slow, quantised temperature holds its reading for many samples yet is judged on its course
        print(f"unchanged from one healthy sample to the next in a fifth of them or more, so stuck check off for: "
              f"{', '.join(flat)} (holding a reading is their normal; a signal that should move here is worth a look "
              "at its source)")
    rare = models.metadata.get("rare_states")
    if rare:
        normal_rows = models.metadata["normal_rows"]
        print("left their usual value in only a few healthy rows, too few to learn that state from: " + ", ".join(
            f"{k} ({n} of {normal_rows})" for k, n in rare.items()) + "; if that state is normal running (a standby "
            "pump, a valve opened now and then), give the line a mode for it or name the signal in operating_point; "
            "until then the detector leaves such a signal out (its few rows would set the threshold for every signal)")
    if models.seen:
        print("left out of the detector and watched by the unseen check (an alarm when one sits at a value its healthy "
              "history never held): "
              + ", ".join(f"{k} (held {' or '.join(f'{lo:g}' if lo == hi else f'{lo:g} to {hi:g}' for lo, hi, _ in b)})"
                          for k, b in models.seen.items()))
    print(f"saved {path} (line fingerprint {models.fingerprint})"
          + ("" if args.out else f"; `factory-copilot run --config {args.line}` loads it from there"))
    return 0


def retune_command(args: argparse.Namespace) -> int:
    import shutil
    import time

    from factory_copilot.config import ServicePaths
    from factory_copilot.detect.persist import (
        ModelMismatchError,
        load_detector,
        save_detector,
    )
    from factory_copilot.detect.retune import retune
    from factory_copilot.store.store import open_store, store_missing

    line = load_line(args.config)
    paths = ServicePaths.of_line(line, Path(args.config), args.state_dir)
    if missing := store_missing(line, paths):
        print(f"error: {missing}", file=sys.stderr)
        return 2
    try:
        models = load_detector(paths.detector, line, args.config)
    except ModelMismatchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    since = time.time() - args.since_hours * 3600
    with open_store(line, paths, read_only=True) as store:  # this line's rows only, in a site's store too
        false_alarms = store.false_alarms(since)
        confirmed = store.marked_alarms(("confirmed", "other_cause"))  # every confirmed fault guards, however old
    try:
        report = retune(models, line, false_alarms, confirmed, margin=args.margin, max_raise=args.max_raise,
                        actor=args.actor)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = {"detector": str(paths.detector), "false_alarms": len(false_alarms), **report.to_dict()}
    if report.changed and not args.dry_run:
        backup = paths.detector.with_name(f"{paths.detector.name}.{time.strftime('%Y%m%dT%H%M%S')}.bak")
        shutil.copy2(paths.detector, backup)
        save_detector(paths.detector, models)
        out["backup"] = str(backup)
        out["note"] = "the service uses the retuned detector from its next start"
    print(json.dumps(out, indent=2))
    return 0


def _sim_table(sim: dict) -> str:
    rows = [f"{'scenario':26s} {'detected':>8s} {'delay s':>8s} {'named':>20s} {'1st min':>20s}"]
    for s in sim["scenarios"]:
        if s["fault"] == "normal":
            continue
        delay = f"{s['delay_s']:.0f}" if s["delay_s"] is not None else "-"
        rows.append(f"{s['name']:26s} {str(s['detected']):>8s} {delay:>8s} {str(s['named']):>20s} {str(s['named_first']):>20s}")
    rows.append(
        f"detected {sim['detected']}/{sim['faults']}, mean delay {sim['mean_delay_s']:.0f} s, precision {sim['precision']:.3f}, "
        f"recall {sim['recall']:.3f}, F1 {sim['f1']:.3f}, false alarms {sim['false_alarms']} in {sim['normal_hours']:.0f} h "
        f"normal ({sim['false_alarms_per_8h']:.2f} per 8 h), fault named right {sim['classification_accuracy']:.0%} "
        f"(first minute {sim['classification_accuracy_first_minute']:.0%})"
    )
    return "\n".join(rows)


def _tep_table(res: dict) -> str:
    d = res["detection_rate"]
    rows = [f"{'TEP fault':>9s} {'detector':>9s} {'PCA T2':>8s} {'PCA SPE':>8s}"]
    for f in d["detector"]:
        rows.append(f"{f:>9} {d['detector'][f]:9.3f} {d['pca_t2'][f]:8.3f} {d['pca_spe'][f]:8.3f}")
    far = res["false_alarm_rate"]
    rows.append(f"{'normal FA':>9s} {far['detector']:9.3f} {far['pca_t2']:8.3f} {far['pca_spe']:8.3f}")
    m = res["mean_detection_rate_visible"]
    rows.append(f"{'mean*':>9s} {m['detector']:9.3f} {m['pca_t2']:8.3f} {m['pca_spe']:8.3f}   (*faults other than 3, 9, 15)")
    a = res["classification_accuracy"]
    rows.append(f"classification accuracy: FaultClassifier {a['classifier']:.3f} (with 'unknown' {a['classifier_named']:.3f}, "
                f"unknown {res['classification_unknown_rate']:.0%}) vs RandomForest(200) {a['random_forest']:.3f}")
    if "windowed" in a:  # results saved before the windowed classifier was measured lack it
        rows.append(f"windowed (course over lags {', '.join(map(str, res['windowed_lags']))} rows): {a['windowed']:.3f} (with 'unknown' "
                    f"{a['windowed_named']:.3f}, unknown {res['classification_unknown_rate_windowed']:.0%})")
    if "test_set" in res:
        rows.append(_tep_test_table(res))
    return "\n".join(rows)


def _tep_test_table(res: dict) -> str:
    """The standard test-set protocol's figures beside the blocked CV's: detection per fault, then classification."""
    from factory_copilot.detect import tep  # as evaluate_command: not at the top

    t, d = res["test_set"], res["detection_rate"]
    cv, td = "blocked CV", f"test set (rows {t['onset_row']}+)"
    rows = ["", f"TEP test set: fit on d00..d21.dat, scored on dNN_te.dat from row {t['onset_row']} (the onset) on, "
                "d00_te.dat for false alarms",
            f"{'':9s} {cv:>28s} | {td:>28s}",
            f"{'TEP fault':>9s} {'detector':>9s} {'PCA T2':>8s} {'PCA SPE':>9s} | {'detector':>9s} {'PCA T2':>8s} {'PCA SPE':>9s}"]
    names = ("detector", "pca_t2", "pca_spe")
    for f in t["detection_rate"]["detector"]:
        before = d["detector"].get(f, d["detector"].get(str(f)))
        left = (f"{before:9.3f} {d['pca_t2'].get(f, d['pca_t2'].get(str(f))):8.3f} "
                f"{d['pca_spe'].get(f, d['pca_spe'].get(str(f))):9.3f}") if before is not None else f"{'':28s}"
        rows.append(f"{f:>9} {left} | " + " ".join(f"{t['detection_rate'][n][f]:{w}.3f}" for n, w in zip(names, (9, 8, 9))))

    def line(label: str, left: dict | None, right: dict) -> str:
        cells = " ".join(f"{left[n]:{w}.3f}" for n, w in zip(names, (9, 8, 9))) if left else f"{'':28s}"
        return f"{label:>9s} {cells} | " + " ".join(f"{right[n]:{w}.3f}" for n, w in zip(names, (9, 8, 9)))

    rows.append(line("normal FA", res["false_alarm_rate"], t["false_alarm_rate"]) + "   (test: d00_te)")
    rows.append(line("pre FA", None, t["false_alarm_rate_pre_onset"]) + f"   (the {t['onset_row']} rows before each onset)")
    rows.append(line("mean", None, t["mean_detection_rate"]) + "   (all faults)")
    rows.append(line("mean*", res["mean_detection_rate_visible"], t["mean_detection_rate_visible"])
                + f"   (*faults other than {', '.join(map(str, tep.INVISIBLE_FAULTS))})")
    a, ta, tv, unknown = res["classification_accuracy"], t["classification_accuracy"], t["classification_accuracy_visible"], \
        t["classification_unknown_rate"]
    rows += ["", f"{'classification accuracy':40s} {'blocked CV':>10s} {'test set':>9s} {'visible*':>9s} {'unknown':>8s}"]
    lags = ", ".join(map(str, t["windowed_lags"]))
    for key, label in (("classifier", "FaultClassifier, snapshot"), ("windowed", f"FaultClassifier, windowed ({lags})")):
        rows.append(f"{label:40s} {a.get(key, float('nan')):10.3f} {ta[key]:9.3f} {tv[key]:9.3f} {unknown[key]:8.0%}")
        rows.append(f"{'  counting unknown as wrong':40s} {a.get(key + '_named', float('nan')):10.3f} "
                    f"{ta[key + '_named']:9.3f} {tv[key + '_named']:9.3f}")
    rows.append(f"{'RandomForest(200), raw rows':40s} {a['random_forest']:10.3f} {ta['random_forest']:9.3f} "
                f"{tv['random_forest']:9.3f}")
    rows.append(f"(test set: rows from the onset on scored against their fault, d00_te's against normal; "
                f"*without the test files of faults {', '.join(map(str, tep.INVISIBLE_FAULTS))})")
    return "\n".join(rows)


def _plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [k for k in ("tep", "sim") if k in results]
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, 4 * len(panels)), squeeze=False)
    for ax, key in zip(axes[:, 0], panels):
        if key == "tep":
            d = results["tep"]["detection_rate"]
            faults = list(d["detector"])
            width = 0.28
            for i, name in enumerate(("detector", "pca_t2", "pca_spe")):
                ax.bar([int(f) + (i - 1) * width for f in faults], [d[name][f] for f in faults], width, label=name)
            ax.set_xticks([int(f) for f in faults])
            ax.set_xlabel("TEP fault")
            ax.set_ylabel("detection rate")
            ax.legend()
            ax.set_title("Tennessee Eastman: detection rate per fault")
        else:
            sc = [s for s in results["sim"]["scenarios"] if s["fault"] != "normal"]
            ax.barh([s["name"] for s in sc], [s["delay_s"] if s["delay_s"] is not None else 0 for s in sc],
                    color=["tab:green" if s["named"] == s["fault"] else "tab:red" for s in sc])
            ax.set_xlabel("detection delay (s); green = fault named right")
            ax.set_title("Simulated line: detection delay per scenario")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _per(unit: str | None) -> tuple[str, float]:
    """How rates are said: per hour, or per 1,000 of the line's own time unit (the factor from a rate per hour)."""
    return ("per hour", 1.0) if not unit else (f"per 1000 {unit}s", 1000 / 3600)


def _recording_table(res: dict, unit: str | None = None) -> str:
    when_head, delay_head = ("from (UTC)", "delay s") if not unit else (f"from ({unit})", f"delay {unit}s"[:8])
    rows = [f"{'event':24s} {when_head:>20s} {'rows':>7s} {'detected':>8s} {delay_head:>8s} {'named':>22s}"]
    for e in res["events"]:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e["start_ts"])) if not unit else f"{e['start_ts']:g}"
        delay = f"{e['delay_s']:.0f}" if e["delay_s"] is not None else "-"
        rows.append(f"{e['label'][:24]:24s} {when:>20s} {e['rows']:7d} {str(e['detected']):>8s} {delay:>8s} {str(e['named'])[:22]:>22s}")
    delay = (f"{res['mean_delay_s']:.0f} " + (unit + "s" if unit else "s")) if res["mean_delay_s"] is not None else "-"
    span = f"{res['hours']:.1f} h" if not unit else f"{res['hours'] * 3600:g} {unit}s"
    per, k = _per(unit)
    rows.append(
        f"rows {res['rows']} ({span}, {res['fault_rows']} labelled fault): precision {res['precision']:.3f}, "
        f"recall {res['recall']:.3f}, F1 {res['f1']:.3f}, false-alarm rate {res['false_alarm_rate']:.2e} of normal rows "
        f"(target {res['target_false_alarm_rate']:g}), missed-alarm rate {res['missed_alarm_rate']:.3f}")
    rows.append(
        f"events detected {res['events_detected']}/{len(res['events'])}, mean delay {delay}; alarms {res['alarms']} "
        f"({res['alarms_per_hour'] * k:.2f} {per}; {res['alarms_rung']} rung, the rest folded under their root), "
        f"of which false {res['false_alarms']} "
        f"({res['false_alarms_per_hour'] * k:.2f} {per} of normal running)")
    if res["kinds"]:
        # why rows were flagged: the detector, or which single-signal check
        rows.append("flagged by (anomalies per kind): " + ", ".join(
            f"{kind} {n}" for kind, n in sorted(res["kinds"].items(), key=lambda kv: -kv[1])))
    return "\n".join(rows)


def _plot_recording(res: dict, path: Path, title: str, unit: str | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    import numpy as np
    import pandas as pd

    s = res["series"]
    t = pd.to_datetime(np.asarray(s["ts"]), unit="s") if not unit else np.asarray(s["ts"], dtype=float)
    score = np.asarray(s["score"])
    truth = np.asarray(s["truth"], dtype=bool)
    flagged = np.asarray(s["flagged"], dtype=bool)
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(12, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot(t, np.clip(score, 1e-3, None), lw=0.6, color="tab:blue", label="detector score (1 = threshold)")
    ax.axhline(1.0, color="tab:red", lw=0.8, ls="--", label="threshold")
    ax.set_yscale("log")
    for k in s["alarm_rows"]:
        ax.axvline(t[k], color="tab:orange", lw=0.8)
    ax.plot([], [], color="tab:orange", label="alarm raised")
    ax.fill_between(t, 0, 1, where=truth, transform=ax.get_xaxis_transform(), color="tab:red", alpha=0.12,
                    label="labelled fault")
    ax.set_ylabel("score / threshold")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(title)
    ax2.fill_between(t, 0, flagged.astype(float), step="post", color="tab:orange", alpha=0.6, label="flagged")
    ax2.fill_between(t, 0, -truth.astype(float), step="post", color="tab:red", alpha=0.4, label="labelled")
    ax2.set_yticks([])
    ax2.legend(loc="upper left", fontsize=8)
    if unit:
        ax2.set_xlabel(unit)
    else:
        ax2.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d %H:%M"))
        fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _baselines(args: argparse.Namespace, line, models, frame, res: dict) -> dict:
    """PCA T²+Q and IsolationForest fitted on healthy history and scored on the recording beside the detector,
    printed as a table: does the product beat the simple methods on this machine?"""
    from factory_copilot.detect.baselines import baseline_flags, flag_figures
    from factory_copilot.alarms.engine import AlarmSettings
    from factory_copilot.plumbing.history import fault_rows

    signals = list(models.detector.signals_)
    files = args.baselines_on or models.metadata.get("history_files") or []
    missing = [f for f in files if not Path(f).exists()]
    truth = np.asarray(res["series"]["truth"], dtype=bool)
    if files and not missing:
        history = read_history(files, line)
        healthy = fault_rows(history["fault"]) == 0 if "fault" in history.columns else np.ones(len(history), dtype=bool)
        normal, source = history.loc[healthy, signals], f"the {int(healthy.sum())} healthy rows of {', '.join(map(str, files))}"
    else:
        # no training history at hand: the recording's own healthy rows before its first labelled fault
        first = int(np.argmax(truth)) if truth.any() else len(truth)
        normal = frame.iloc[:first][signals]
        why = f"{', '.join(missing)} not found" if missing else "the model file names no training history"
        source = f"the recording's {first} healthy rows before its first fault ({why}; --baselines-on FILE to choose)"
        if first < 2 * len(signals) + 10:
            print(f"baselines skipped: {why}, and the recording has only {first} healthy rows before its first fault")
            return {}
    ts = np.asarray(res["series"]["ts"], dtype=float)
    # their alarms wait the alarm engine's default on-delay, in rows (the detector's go through the engine itself)
    on_delay = 1 + math.ceil(AlarmSettings().on_delay_s / line.sampling_interval_s)
    figures = {name: flag_figures(flags, truth, ts, line.sampling_interval_s, on_delay)
               for name, flags in baseline_flags(normal, frame).items()}
    print(f"beside the simple methods (fitted on {source}):")
    per, k = _per(line.time_unit)
    print(f"  {'method':16s} {'F1':>6s} {'FAR':>9s} {'MAR':>7s} {'events':>8s}  false alarms {per}")
    rows = [("line detector", {"f1": res["f1"], "false_alarm_rate": res["false_alarm_rate"],
                               "missed_alarm_rate": res["missed_alarm_rate"], "events_detected": res["events_detected"],
                               "events": len(res["events"]), "false_alarms_per_hour": res["false_alarms_per_hour"]})]
    for name, f in rows + list(figures.items()):
        print(f"  {name:16s} {f['f1']:6.3f} {f['false_alarm_rate']:9.2e} {f['missed_alarm_rate']:7.3f} "
              f"{f['events_detected']:>3d}/{f['events']:<4d}  {f['false_alarms_per_hour'] * k:.2f}")
    return {"fitted_on": source, **figures}


def evaluate_recording_command(args: argparse.Namespace) -> int:
    from factory_copilot.config import ServicePaths
    from factory_copilot.detect.evaluate import evaluate_recording
    from factory_copilot.detect.operating import untrained_note
    from factory_copilot.detect.persist import ModelMismatchError, load_detector

    line = load_line(args.line)
    path = Path(args.models) if args.models else ServicePaths.of_line(line, Path(args.line)).detector
    try:
        models = load_detector(path, line, args.line)
    except ModelMismatchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if Path(args.history).suffix.lower() in (".jsonl", ".ndjson"):
        print(f"error: {args.history}: a reading stream (JSON lines) carries no labels, so it cannot be scored; "
              f"evaluate a CSV or Parquet table with a label column ({HISTORY_DOC})", file=sys.stderr)
        return 2
    try:
        frame = read_history([args.history], line)
        res = evaluate_recording(models, line, frame, args.labels)
    except (ValueError, KeyError) as exc:
        print(f"error: {args.history}: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(_recording_table(res, line.time_unit))
    note = untrained_note(line, Path(args.history).name, res["rows"], res["untrained_rows"])
    if note:
        print(note)
    if not args.no_baselines:
        res["baselines"] = _baselines(args, line, models, frame, res)
    (out / "results.json").write_text(json.dumps({k: v for k, v in res.items() if k != "series"}, indent=2, default=str))
    _plot_recording(res, out / "recording.png", f"{line.site}/{line.line}: {Path(args.history).name}", line.time_unit)
    print(f"wrote {out / 'results.json'} and {out / 'recording.png'}")
    return 0


def evaluate_command(args: argparse.Namespace) -> int:
    from factory_copilot.detect import tep
    from factory_copilot.detect.evaluate import evaluate_tep
    from factory_copilot.detect.persist import ModelMismatchError, load_detector

    if args.history:
        return evaluate_recording_command(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {}
    if args.only in (None, "tep"):
        where = tep.folder(args.tep)
        given = getattr(args, "tep_test", None)
        test_dir = Path(given) if given else where if tep.has_test_set(where) else None
        if given and not tep.has_test_set(test_dir):
            print(f"error: no {test_dir / 'd01_te.dat'} (or d00_te.dat); {tep.HOW_TEST}", file=sys.stderr)
            return 2
        if tep.available(where):
            results["tep"] = evaluate_tep(where, tep_test_dir=test_dir)
            print(_tep_table(results["tep"]))
        else:
            why = f"no {where / 'd00.dat'}" if where is not None else "no TEP folder given"
            if args.only == "tep":
                print(f"error: {why}; {tep.HOW}", file=sys.stderr)
                return 2
            print(f"TEP skipped: {why} ({tep.HOW})", file=sys.stderr)
    if args.only in (None, "sim"):
        from factory_copilot.alarms.evaluate import kpi_table
        from factory_copilot.detect.evaluate import SIM_DETECTOR, train_models

        sim = simulated_line()

        line = load_line(args.line)
        models = None
        if args.models:
            try:
                models = load_detector(args.models, line, args.line)
            except ModelMismatchError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
        else:
            models = train_models(line, sim.simulated_history(line, seed=1), detector_params=SIM_DETECTOR)
        results["sim"] = sim.evaluate_sim(line, models, normal_hours=args.normal_hours)
        print(_sim_table(results["sim"]))
        # the same runs' faults, repaired, through the alarm engine as well: what an operator would be shown
        results["alarms"] = sim.evaluate_alarms(line, models, normal_hours=args.normal_hours)
        print(kpi_table(results["alarms"]))
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    _plot(results, out / "results.png")
    print(f"wrote {out / 'results.json'} and {out / 'results.png'}")
    return 0
