"""Owns whether a training had converged: the stored form of a training curve, the test that says a
loss was still falling when training stopped, and the warnings `dse run` prints about it.

- `curve_trend(curve)`: a straight line fitted by least squares to log(loss) against step over the
  points of the last `TREND_WINDOW` (30%) of the steps (at least `TREND_MIN_POINTS` points, else
  `(False, nan)`). `loss_trend` is the fitted relative change of the loss across that window
  (exp(slope * (last step - first step)) - 1; negative = falling). The loss is `still_improving` when
  the slope is negative by a one-sided t test at `TREND_CONFIDENCE` (95%; n - 2 degrees of freedom)
  AND the fitted fall over the window is more than `TREND_MIN_FALL` (2%): a fall that is real but
  smaller than that is called converged enough.
- `curve_json` / `parse_curve`: a curve as the store's `loss_curve` column, compact JSON
  [[step, loss], ...] with each loss rounded to 6 significant digits.
- `study_warnings(rows)`: the lines for the end of `dse run`: when more than half of the complete rows
  were still improving, and, when the study holds one candidate trained at two or more step counts,
  by how much more training changed FID (the data's own answer to "would training longer help?").

Imports neither torch nor ray; numpy at module level, scipy (the t quantile) inside a function.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from dse.events import COMPLETE

if TYPE_CHECKING:
    import pandas as pd

TREND_WINDOW = 0.3  # the last 30% of the steps: the part of the curve the test looks at
TREND_MIN_POINTS = 4  # fewer points in that window: no test (still_improving False, trend NaN)
TREND_CONFIDENCE = 0.95  # one-sided t test that the slope of log(loss) is negative
TREND_MIN_FALL = 0.02  # and the fitted loss falls by more than 2% over the window
CURVE_DIGITS = 6  # significant digits of a loss in `loss_curve`

Curve = Sequence[tuple[int, float]]


def curve_json(curve: Iterable[Sequence[float]]) -> str:
    """`curve` as compact JSON [[step, loss], ...], losses to `CURVE_DIGITS` significant digits;
    points whose loss is not finite are left out (JSON has no NaN)."""
    points = [[int(step), float(f"{float(loss):.{CURVE_DIGITS}g}")] for step, loss in curve if math.isfinite(loss)]
    return json.dumps(points, separators=(",", ":"))


def parse_curve(text: Any) -> list[tuple[int, float]]:
    """The (step, loss) points of a `loss_curve` value; [] for a missing, empty or unreadable one."""
    if not isinstance(text, str) or not text:
        return []
    try:
        points = json.loads(text)
        return [(int(step), float(loss)) for step, loss in points]
    except (ValueError, TypeError):
        return []


def _t_quantile(p: float, df: int) -> float:
    from scipy import stats

    return float(stats.t.ppf(p, df))


def curve_trend(curve: Curve) -> tuple[bool, float]:
    """(still_improving, loss_trend) of a training curve of (step, loss) points (module docstring);
    (False, nan) when the last `TREND_WINDOW` of the steps holds fewer than `TREND_MIN_POINTS` points."""
    pts = np.array([(s, l) for s, l in curve if math.isfinite(l) and l > 0], dtype=np.float64).reshape(-1, 2)
    if len(pts) < TREND_MIN_POINTS:
        return False, math.nan
    last = pts[:, 0].max()
    window = pts[pts[:, 0] >= last * (1 - TREND_WINDOW)]
    n = len(window)
    if n < TREND_MIN_POINTS:
        return False, math.nan
    x, y = window[:, 0], np.log(window[:, 1])
    sxx = float(((x - x.mean()) ** 2).sum())
    if sxx == 0:
        return False, math.nan
    slope = float(((x - x.mean()) * (y - y.mean())).sum() / sxx)
    residuals = y - (y.mean() + slope * (x - x.mean()))
    se = math.sqrt(float((residuals ** 2).sum()) / (n - 2) / sxx)
    trend = math.expm1(slope * float(x.max() - x.min()))
    if se > 0:
        falling = slope / se < -_t_quantile(TREND_CONFIDENCE, n - 2)
    else:  # a perfect line: its sign is the answer
        falling = slope < 0
    return bool(falling and trend < -TREND_MIN_FALL), trend


# The train keys that change only how long (or how often saved) a training is: left out when rows of
# one candidate are matched across step counts.
_LENGTH_KEYS = ("steps", "epochs", "seed", "checkpoint_every")
# Columns that say what a row trained and measured, besides its [train] and [eval] settings.
_WHAT_COLUMNS = ("dataset", "pairs_dir", "depth", "width", "heads", "mlp_ratio", "patch_size", "setup", "loss",
                 "guidance", "fid_num_samples", "fid_extractor")


def _training_key(row: dict[str, Any]) -> str:
    """What a row trained and measured, except its length and seed: rows with the same key are one
    candidate at different step counts (or seeds)."""
    text = row.get("config_json")
    try:
        config = json.loads(text) if isinstance(text, str) and text else {}
    except ValueError:
        config = {}
    config = config if isinstance(config, dict) else {}
    train = {k: v for k, v in (config.get("train") or {}).items() if k not in _LENGTH_KEYS}
    key = {c: row.get(c) for c in _WHAT_COLUMNS}
    key.update(train=train, eval=config.get("eval"))
    return json.dumps(key, sort_keys=True, default=str)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool) \
        and math.isfinite(float(value))


def _is_true(value: Any) -> bool:
    """A stored flag that is set (None, NaN and pandas' NA are not)."""
    try:
        return value is not None and not (isinstance(value, float) and math.isnan(value)) and bool(value)
    except TypeError:  # pd.NA
        return False


def _pct(fraction: float) -> str:
    return f"{100 * fraction:.1f}%"


def study_warnings(rows: "pd.DataFrame") -> list[str]:
    """The lines for the end of `dse run` about convergence, from a study's rows (store columns): []
    when there is nothing to say."""
    if rows is None or len(rows) == 0 or "status" not in rows:
        return []
    complete = [r for r in rows.to_dict("records") if r.get("status") == COMPLETE]
    lines = []
    improving = [r for r in complete if _is_true(r.get("still_improving"))]
    if complete and 2 * len(improving) > len(complete):
        trends = [float(r["loss_trend"]) for r in improving if _finite(r.get("loss_trend"))]
        fall = f" (loss falling by {_pct(-float(np.median(trends)))} over the last {TREND_WINDOW:.0%} of steps)" \
            if trends else ""
        lines.append(f"{len(improving)} of {len(complete)} trials were still improving when training stopped{fall}: "
                     "their FIDs are not converged; train longer (--steps / train.steps)")
    line = _steps_effect(complete)
    if line:
        lines.append(line)
    return lines


def _steps_effect(complete: list[dict[str, Any]]) -> str | None:
    """"more steps changed FID by ..." from the candidates measured at two or more step counts (their
    shortest against their longest run, each the mean over its seeds); None when none was."""
    by_key: dict[str, dict[int, list[float]]] = {}
    for r in complete:
        if _finite(r.get("fid")) and _finite(r.get("steps")):
            by_key.setdefault(_training_key(r), {}).setdefault(int(r["steps"]), []).append(float(r["fid"]))
    pairs: dict[tuple[int, int], list[tuple[float, float]]] = {}  # (S1, S2) -> [(fid at S1, fid at S2)]
    for by_steps in by_key.values():
        if len(by_steps) >= 2:
            s1, s2 = min(by_steps), max(by_steps)
            pairs.setdefault((s1, s2), []).append((float(np.mean(by_steps[s1])), float(np.mean(by_steps[s2]))))
    if not pairs:
        return None
    (s1, s2), found = max(pairs.items(), key=lambda item: (len(item[1]), item[0][1]))  # the most candidates
    changes = [b - a for a, b in found]
    relative = [(b - a) / a for a, b in found if a > 0]
    what = "doubling the steps" if s2 == 2 * s1 else f"{s2 / s1:.3g}x the steps"
    spread = f"; from {min(changes):+.2f} to {max(changes):+.2f}" if len(changes) > 1 else ""
    rel = f" ({'+' if np.mean(relative) >= 0 else ''}{_pct(float(np.mean(relative)))})" if relative else ""
    return (f"{what} changed FID by {np.mean(changes):+.2f}{rel} (from {s1} to {s2} steps, "
            f"{len(found)} candidate{'s' if len(found) != 1 else ''}{spread})")
