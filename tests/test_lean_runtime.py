"""The service runs a trained detector without pandas, pyarrow, scipy or scikit-learn, and scores as training did.

Training fits with scikit-learn and scipy; the model file holds numpy arrays only (the classifier's trees
exported, the EWMA filters in numpy), so the serving process never imports them: they and pandas 3's
pyarrow would double its memory. These tests check that a fresh service process stays lean, and that
what it computes equals what the scikit-learn / scipy implementations give on the same rows.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
from scipy.signal import lfilter
from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier

from factory_copilot.config import SIMULATED_LINE, load_line
from factory_copilot.copilot.tfidf import TfIdfIndex
from factory_copilot.detect import DetectStation, FaultClassifier, LineDetector, TrainedDetector, save_detector
from factory_copilot.detect import features, multivariate
from factory_copilot.detect.forest import Forest
from factory_copilot.records import Reading

LINE = load_line(SIMULATED_LINE)
KEYS = LINE.signal_keys()
WIDTH = {k: LINE.signal(k).normal[1] - LINE.signal(k).normal[0] for k in KEYS}
MIDDLE = {k: sum(LINE.signal(k).normal) / 2 for k in KEYS}
HEAVY = ("pandas", "pyarrow", "scipy", "sklearn")


def history(n: int, seed: int, shift: dict | None = None) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    load = rng.normal(size=n)
    df = pd.DataFrame({k: MIDDLE[k] + 0.05 * WIDTH[k] * (load if i % 3 == 0 else rng.normal(size=n))
                       for i, k in enumerate(KEYS)})
    for k, v in (shift or {}).items():
        df[k] += v
    return df


@pytest.fixture(scope="module")
def trained(monkeypatch_module):
    """A detector and classifier fitted on the simulated line's signals, and the scikit-learn forest behind it."""
    grown = []
    export = Forest.from_sklearn.__func__
    monkeypatch_module.setattr(Forest, "from_sklearn", classmethod(lambda cls, f: grown.append(f) or export(cls, f)))
    normal = history(3000, 0)
    det = LineDetector(false_alarm_rate=0.001, persistence=2).fit(normal)
    cav = history(600, 1, {"product_pump.flow": -0.3 * WIDTH["product_pump.flow"]})
    heat = history(600, 2, {"heat_tunnel.zone1_temperature": -0.3 * WIDTH["heat_tunnel.zone1_temperature"]})
    X = pd.concat([normal.iloc[:600], cav, heat], ignore_index=True)
    y = ["normal"] * 600 + ["pump_cavitation"] * 600 + ["heater_degradation"] * 600
    clf = FaultClassifier(n_estimators=40).fit(X, y)
    return det, clf, grown[0]


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def faulty_rows() -> pd.DataFrame:
    X = history(400, 3)
    X.loc[200:, "product_pump.flow"] -= 0.3 * WIDTH["product_pump.flow"]
    return X


def readings(X: pd.DataFrame) -> list[Reading]:
    out = []
    for t, row in enumerate(X.itertuples(index=False)):
        out.append(Reading(float(t), "line", "mode", 2.0))
        out += [Reading(float(t), *k.split(".", 1), float(v)) for k, v in zip(KEYS, row)]
    return out + [Reading(float(len(X)), "line", "mode", 2.0)]  # opens the next row, so the last one is evaluated


def multivariate_anomalies(station: DetectStation, rows: list[Reading]) -> list[list]:
    found = [a for r in rows for a in station.add(r) if a.kind == "multivariate"]
    return [[a.ts, a.score, a.fault_type, a.fault_probability] for a in found]


SERVE = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from factory_copilot.config import SIMULATED_LINE, ServicePaths, load_line
    from factory_copilot.detect.persist import load_detector
    from factory_copilot.records import Reading
    from factory_copilot.service import LineService

    line = load_line(SIMULATED_LINE)
    service = LineService(line, load_detector(sys.argv[1], line), ServicePaths(Path(sys.argv[2])))
    rows = [Reading(*r) for r in json.load(open(sys.argv[3]))]
    found = [a for r in rows for a in service.detect.add(r) if a.kind == "multivariate"]
    hits = service.copilot.library.search("pump cavitation flow low")  # the runbooks' TF-IDF index
    print(json.dumps({
        "runbook_hits": len(hits),
        "anomalies": [[a.ts, a.score, a.fault_type, a.fault_probability] for a in found],
        "loaded": sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[4].split(","))),
    }))
""")


def test_a_service_process_serves_a_trained_detector_without_pandas_scipy_or_sklearn(trained, tmp_path):
    det, clf, _ = trained
    path = save_detector(tmp_path / "detector.joblib", TrainedDetector(LINE.fingerprint(), LINE.line, det, clf))
    rows = readings(faulty_rows())
    (tmp_path / "rows.json").write_text(json.dumps([[r.ts, r.asset, r.signal, r.value] for r in rows]))
    out = subprocess.run([sys.executable, "-c", SERVE, str(path), str(tmp_path / "state"), str(tmp_path / "rows.json"),
                          ",".join(HEAVY)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    served = json.loads(out.stdout.strip().splitlines()[-1])
    assert served["loaded"] == [], f"the service process imported {served['loaded']}"
    assert served["runbook_hits"] > 0
    # the same anomalies, scores and fault names as the detector scoring in this (training) process
    here = multivariate_anomalies(DetectStation(LINE, detector=det, classifier=clf, checks=None), rows)
    assert len(served["anomalies"]) > 100 and min(a[0] for a in served["anomalies"]) >= 200
    assert [a[0] for a in served["anomalies"]] == [a[0] for a in here]
    assert np.allclose([a[1] for a in served["anomalies"]], [a[1] for a in here], rtol=1e-12)
    assert [a[2] for a in served["anomalies"]] == [a[2] for a in here]
    assert served["anomalies"][-1][2] == "pump_cavitation"


def test_classifier_probabilities_equal_the_scikit_learn_forests(trained):
    det, clf, forest = trained
    F = clf.features(pd.concat([faulty_rows(), history(300, 9, {"heat_tunnel.zone1_temperature": -8.0})]))
    assert isinstance(clf.forest_, Forest) and not hasattr(clf.forest_, "estimators_")
    assert np.array_equal(clf.forest_.predict_proba(F), forest.predict_proba(F))
    assert np.array_equal(clf.forest_.predict(F), forest.predict(F))
    assert list(clf.classes_) == list(forest.classes_)


@pytest.mark.parametrize("model", [
    ExtraTreesClassifier(n_estimators=25, min_samples_leaf=2, random_state=1),
    RandomForestClassifier(n_estimators=10, random_state=2),
])
def test_exported_trees_give_scikit_learns_probabilities_also_with_missing_values(model):
    rng = np.random.default_rng(4)
    X = rng.normal(size=(3000, 8))
    y = np.array(["a", "b", "c"])[(X[:, 0] > 0).astype(int) + (X[:, 3] > 1).astype(int)]
    X[rng.random(X.shape) < 0.05] = np.nan  # trees learn where a missing value goes
    model.fit(X, y)
    Xt = rng.normal(size=(5000, 8)).astype(np.float64)
    Xt[rng.random(Xt.shape) < 0.05] = np.nan
    Xt[:50, 2] = model.estimators_[0].tree_.threshold[0]  # on a split: goes left, as in scikit-learn
    exported = Forest.from_sklearn(model)
    assert np.array_equal(exported.predict_proba(Xt), model.predict_proba(Xt))
    assert np.array_equal(exported.predict_proba(Xt[:1]), model.predict_proba(Xt[:1]))
    with pytest.raises(ValueError, match="8 features"):
        exported.predict_proba(Xt[:, :5])


@pytest.mark.parametrize("lam", [1.0, 0.999, 0.3, 0.05, 1 / 3600])
def test_ewma_filter_equals_scipys_lfilter(lam):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20_000, 3)) * 50 + 10
    start = rng.normal(size=3)
    ref = lfilter([lam], [1.0, -(1.0 - lam)], x, axis=0, zi=((1.0 - lam) * start)[None, :])[0]
    assert np.allclose(features.first_order(x, lam, start), ref, rtol=1e-12, atol=1e-12 * np.abs(x).max())
    one = lfilter([lam], [1.0, -(1.0 - lam)], x[:, 0], zi=[(1.0 - lam) * x[0, 0]])[0]
    assert np.allclose(features.first_order(x[:, 0], lam, x[0, 0]), one, rtol=1e-12, atol=1e-12 * np.abs(x).max())
    assert features.first_order(x[:0], lam).shape == (0, 3)


def test_detector_scores_as_with_scipys_filter(monkeypatch):
    """Fitted and scored with the numpy filter, or with scipy's: the same scores (operating-point lags, baseline)."""
    rng = np.random.default_rng(1)
    n = 6000
    load = lfilter([0.05], [1, -0.95], np.repeat(rng.choice([5.0, 15.0], n // 500), 500) + rng.normal(scale=0.3, size=n))
    X = pd.DataFrame({"fan.load_setpoint": load, "fan.current": 20 + 3 * load + rng.normal(scale=0.4, size=n),
                      "fan.vibration": rng.normal(size=n)})
    test = X.iloc[:2000].copy()
    test.loc[1200:, "fan.current"] += 2.0
    params = dict(context_lags=(50.0,), baseline_rows=2000, baseline_every=60, baseline_hold=300)
    ours = LineDetector(**params).fit(X)

    def scipy_filter(x, lam, start=0.0):
        x = np.asarray(x, dtype=float)
        zi = (1.0 - lam) * np.broadcast_to(np.asarray(start, dtype=float), x.shape[1:])
        return x.copy() if lam >= 1.0 else lfilter([lam], [1.0, -(1.0 - lam)], x, axis=0, zi=zi[None, ...])[0]

    monkeypatch.setattr(features, "first_order", scipy_filter)
    monkeypatch.setattr(multivariate, "first_order", scipy_filter)
    theirs = LineDetector(**params).fit(X)
    assert ours.context_lags_ == (50.0,)
    for a, b in ((ours.anomaly_score(test), theirs.anomaly_score(test)), (ours.anomaly_score(X), theirs.anomaly_score(X))):
        assert np.allclose(a, b, rtol=1e-9, atol=1e-12)
    assert np.array_equal(ours.flag(test), theirs.flag(test)) and ours.flag(test)[1300:].mean() > 0.5


def test_detectors_keep_scikit_learns_estimator_contract():
    from sklearn.base import clone

    det = LineDetector(persistence=3, smoothing=(1.0, 0.2))
    assert det.get_params()["persistence"] == 3 and set(det.get_params()) >= {"smoothing", "context", "holdout"}
    copy = clone(det)
    assert copy is not det and copy.get_params() == det.get_params()
    assert det.set_params(margin=2.0) is det and det.margin == 2.0
    with pytest.raises(ValueError, match="no parameter 'margn'"):
        det.set_params(margn=2.0)
    assert repr(det) == "LineDetector(margin=2.0, persistence=3, smoothing=(1.0, 0.2))"
    assert clone(FaultClassifier(n_estimators=7)).n_estimators == 7


def test_the_detectors_outlier_methods_mean_what_scikit_learns_mean():
    from sklearn.ensemble import IsolationForest

    rng = np.random.default_rng(4)
    X = pd.DataFrame(rng.normal(size=(2000, 3)), columns=["a.x", "a.y", "a.z"])
    test = X.iloc[:400].copy()
    test.iloc[200:, 0] += 8.0  # an outlying stretch
    det = LineDetector(persistence=1).fit(X)
    forest = IsolationForest(random_state=0).fit(X.to_numpy())
    for ours, theirs in ((det.predict(test), forest.predict(test.to_numpy())),):
        assert set(np.unique(ours)) <= {-1, 1} and set(np.unique(theirs)) <= {-1, 1}
        assert (ours[200:] == -1).mean() > 0.9 and (ours[:200] == 1).mean() > 0.9  # -1 = outlier, as theirs
    # higher score_samples = more normal, in both
    assert det.score_samples(test)[200:].mean() < det.score_samples(test)[:200].mean()
    assert forest.score_samples(test.to_numpy())[200:].mean() < forest.score_samples(test.to_numpy())[:200].mean()
    np.testing.assert_allclose(det.score_samples(test), -det.anomaly_score(test))
    # negative decision = beyond the limit; flag (1 = anomalous) is the plant's word for predict == -1
    assert np.array_equal(det.decision_function(test) < 0, det.anomaly_score(test) > 1.0)
    assert np.array_equal(det.flag(test) == 1, det.predict(test) == -1)


def test_runbook_search_scores_equal_scikit_learns_tfidf():
    from sklearn.feature_extraction.text import TfidfVectorizer

    from factory_copilot.copilot.runbooks import _TOKEN, runbooks_of

    library = runbooks_of(LINE)
    docs = [library._document(p) for p in library.passages]
    assert len(docs) > 10
    sk = TfidfVectorizer(token_pattern=_TOKEN, sublinear_tf=True, ngram_range=(1, 2), min_df=1)
    matrix = sk.fit_transform(docs)
    ours = TfIdfIndex(docs, _TOKEN)
    for query in ("pump cavitation", "flow low, NPSH and suction pressure", "Heater zone1 temperature drift",
                  "belt slipping on the infeed conveyor", "nothing-in-the-vocabulary", "the the the"):
        want = (matrix @ sk.transform([query]).T).toarray().ravel()
        got = ours.scores(query)
        assert np.allclose(got, want, rtol=1e-12, atol=1e-15), query
        top = [i for i in np.argsort(-want, kind="stable")[:4] if want[i] > 0]
        assert [i for i in np.argsort(-got, kind="stable")[:4] if got[i] > 0] == top, query


def test_the_command_line_loads_none_of_them_until_a_command_needs_them():
    """`factory-copilot run` and `demo` build the parser, importing every command's module: all must stay light."""
    code = ("import sys; from factory_copilot.cli import build_parser; build_parser(); "
            f"print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}} & set({list(HEAVY)!r}))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == []
