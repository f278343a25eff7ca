"""The store's trends: raw readings for a few minutes, downsampled buckets (mean/min/max) for weeks.

Written in batches, one transaction each; read back for charts, with the raw samples while a
chart can show them and the buckets beyond.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from factory_copilot.records import Quality, Reading

if TYPE_CHECKING:
    import pandas as pd


class Trends:
    """Readings in, trends out (a part of ``Store``: it shares its connection and retention)."""

    def add_readings(self, readings: Sequence[Reading]) -> int:
        """Write a batch of readings in one transaction: raw rows plus the merged trend buckets."""
        if not readings:
            return 0
        raw = []
        buckets: dict[tuple[str, str, float], list] = {}
        width = self.bucket_s
        for r in readings:
            quality = r.quality.value if isinstance(r.quality, Quality) else str(r.quality)
            raw.append((r.ts, r.asset, r.signal, r.value, quality))
            bucket = math.floor(r.ts / width) * width
            agg = buckets.get((r.asset, r.signal, bucket))
            if agg is None:
                agg = buckets[(r.asset, r.signal, bucket)] = [0, 0.0, None, None, 0]
            if r.is_process_value:
                v = float(r.value)  # type: ignore[arg-type]
                agg[0] += 1
                agg[1] += v
                agg[2] = v if agg[2] is None or v < agg[2] else agg[2]
                agg[3] = v if agg[3] is None or v > agg[3] else agg[3]
            else:
                agg[4] += 1
        rows = [(a, s, b, *agg) for (a, s, b), agg in buckets.items()]
        with self._writing() as conn:
            conn.executemany("INSERT INTO readings_raw(ts, asset, signal, value, quality) VALUES(?,?,?,?,?)", raw)
            conn.executemany(
                "INSERT INTO trend(asset, signal, bucket, n, total, vmin, vmax, not_good) VALUES(?,?,?,?,?,?,?,?) "
                # the stored row's columns named by table (PostgreSQL's upsert wants them told from excluded's)
                "ON CONFLICT(asset, signal, bucket) DO UPDATE SET n = trend.n + excluded.n, "
                "total = trend.total + excluded.total, "
                "vmin = CASE WHEN trend.vmin IS NULL OR excluded.vmin < trend.vmin THEN excluded.vmin "
                "ELSE trend.vmin END, "
                "vmax = CASE WHEN trend.vmax IS NULL OR excluded.vmax > trend.vmax THEN excluded.vmax "
                "ELSE trend.vmax END, "
                "not_good = trend.not_good + excluded.not_good",
                rows,
            )
        return len(raw)

    def trend(
        self,
        asset: str,
        since: float,
        until: float | None = None,
        signals: Sequence[str] | None = None,
        resolution: str = "auto",
    ) -> "pd.DataFrame":
        """Samples of an asset's signals in [since, until]: columns ts, signal, mean, min, max, n.

        ``resolution`` "raw" returns every stored sample (mean = min = max = value),
        "bucket" the downsampled buckets (ts = bucket start), "auto" raw when the
        window fits in the raw retention, raw rows cover it and there are at most
        ``max_raw_points`` of them, else buckets.
        """
        import pandas as pd

        until = time.time() if until is None else until
        if resolution not in ("auto", "raw", "bucket"):
            raise ValueError(f"trend resolution {resolution!r}: use auto, raw or bucket")
        sig_sql, sig_params = "", []
        if signals:
            sig_sql = f" AND signal IN ({','.join('?' * len(signals))})"
            sig_params = list(signals)
        use_raw = resolution == "raw"
        if resolution == "auto":
            keep = self.retention.readings_raw
            if keep is not None and until - since <= keep:
                oldest = self._rows("SELECT min(ts) FROM readings_raw WHERE asset=?", (asset,))[0][0]
                # raw only while a chart can show it: thousands of samples a second go through the buckets
                count = self._rows(
                    f"SELECT count(*) FROM readings_raw WHERE asset=? AND ts>=? AND ts<=?{sig_sql}",
                    [asset, since, until, *sig_params])[0][0]
                use_raw = oldest is not None and oldest <= since + self.bucket_s and count <= self.max_raw_points
        if use_raw:
            rows = self._rows(
                "SELECT ts, signal, value, value, value, CASE WHEN quality='good' AND value IS NOT NULL THEN 1 ELSE 0 END "
                f"FROM readings_raw WHERE asset=? AND ts>=? AND ts<=?{sig_sql} ORDER BY ts",
                [asset, since, until, *sig_params],
            )
            frame = pd.DataFrame([tuple(r) for r in rows], columns=["ts", "signal", "mean", "min", "max", "n"])
            # Bad/Uncertain samples are marked, never plotted as data
            frame.loc[frame["n"] == 0, ["mean", "min", "max"]] = float("nan")
        else:
            rows = self._rows(
                "SELECT bucket, signal, CASE WHEN n > 0 THEN total / n END, vmin, vmax, n FROM trend "
                f"WHERE asset=? AND bucket>=? AND bucket<=?{sig_sql} ORDER BY bucket",
                [asset, math.floor(since / self.bucket_s) * self.bucket_s, until, *sig_params],
            )
            frame = pd.DataFrame([tuple(r) for r in rows], columns=["ts", "signal", "mean", "min", "max", "n"])
        return frame.astype({"ts": float, "mean": float, "min": float, "max": float, "n": int})

    def trend_points(self, asset: str, signal: str, since: float, until: float,
                     max_points: int) -> list[tuple[float, float | None, float | None, float | None, int]]:
        """One signal over [since, until] in at most ``max_points`` points: (ts, mean, min, max, n) each.

        Read from the buckets and merged in SQL into ``max_points`` equal spans (a span's ts is its start), so
        what is read back is bounded whatever the window; spans without a good sample are left out.
        """
        if max_points < 1 or until <= since:
            return []
        first = math.floor(since / self.bucket_s) * self.bucket_s
        span = max(self.bucket_s, math.ceil((until - first) / max_points / self.bucket_s) * self.bucket_s)
        rows = self._rows(
            f"SELECT {self._span_index()} AS k, sum(total) / sum(n), min(vmin), max(vmax), sum(n) "
            "FROM trend WHERE asset=? AND signal=? AND bucket>=? AND bucket<=? AND n > 0 GROUP BY k ORDER BY k",
            (first, span, asset, signal, first, until))
        return [(first + k * span, mean, lo, hi, n) for k, mean, lo, hi, n in rows]

    def signal_means(self, keys: Sequence[str], since: float, until: float) -> dict[str, tuple[float, int]]:
        """The mean of good samples over [since, until) of each ``asset.signal`` in ``keys``: key -> (mean, samples).

        One range of the primary key per signal: through the time index every row would be a lookup of its own.
        """
        pairs = [k.split(".", 1) for k in keys]
        if not pairs:
            return {}
        values = ",".join("(?,?)" for _ in pairs)
        rows = self._rows(
            f"WITH wanted(asset, signal) AS (VALUES {values}) SELECT w.asset, w.signal, sum(t.total) / sum(t.n), "
            "sum(t.n) FROM wanted w JOIN trend t ON t.asset=w.asset AND t.signal=w.signal AND t.bucket>=? "
            "AND t.bucket<? AND t.n > 0 GROUP BY w.asset, w.signal",
            [*(x for p in pairs for x in p), since, until])
        return {f"{a}.{s}": (mean, n) for a, s, mean, n in rows if mean is not None}

    def latest_readings(self, asset: str | None = None) -> dict[str, tuple[float, float | None, str]]:
        """Newest raw sample per ``asset.signal``: (ts, value, quality)."""
        params: list[Any] = [asset] if asset else []
        rows = self._rows(self._latest_sql(" WHERE asset=?" if asset else ""), params)
        return {f"{r[0]}.{r[1]}": (r[2], r[3], r[4]) for r in rows}

    def quality_by_asset(self, since: float) -> dict[str, float]:
        """Share of samples that were not good, per asset, since ``since`` (from the buckets, not the raw rows)."""
        rows = self._rows("SELECT asset, sum(n) + sum(not_good), sum(not_good) FROM trend WHERE bucket>=? GROUP BY asset",
                          (since,))
        return {asset: (not_good or 0) / total if total else 0.0 for asset, total, not_good in rows}

    def newest_sample_by_asset(self) -> dict[str, float]:
        """Time of each asset's newest raw sample (assets with none in the raw retention are left out)."""
        return {asset: ts for asset, ts in self._rows("SELECT asset, max(ts) FROM readings_raw GROUP BY asset")}

    def last_reading_by_asset(self, since: float) -> dict[str, float]:
        """Time of each asset's newest sample (assets with a bucket since ``since``)."""
        out = {}
        for asset, last in self._rows("SELECT asset, max(bucket) FROM trend WHERE bucket>=? GROUP BY asset", (since,)):
            # the newest raw sample is one index lookup per asset (asset, ts); buckets only bound it
            newest = self._rows("SELECT max(ts) FROM readings_raw WHERE asset=?", (asset,))[0][0]
            out[asset] = newest if newest is not None else last + self.bucket_s
        return out
