"""Owns the study findings: the paper's design principles checked on a study's points, each answered
"holds", "does not hold" or "cannot tell (tied)" with the numbers and intervals behind it.

`findings(rows)` groups the rows into points (`dse.stats.group_points`: one per candidate x training,
over its training seeds) and evaluates only the principles the data can speak to:

- losses (paper Table 1): points that differ only in their loss: LPIPS < L2 < L1 in FID;
  setups (Table 1): GET < DMD with the same loss;
- design rule (Table 2, Sec. 3.2): the proposed point is on the noise-aware front and its FID is tied
  with (or better than) the best FID at its size, at a lower latency than the best-FID point;
- depth vs width (Fig. 3a-b, Table 2): at about fixed params both the deepest-narrowest and the
  shallowest-widest point have a clearly worse FID than the best point between them;
- heads (Fig. 3c): for one depth and width, a head count in the middle beats the fewest and the most;
- TA and MI1 (Tables 3-4): TA is no clear gain over the GET baseline of the same student; MI1 is worse;
- Table 6 (CIFAR-10, its architectures): the study's FIDs beside the paper's, and whether the order agrees;
- collapse: a point whose samples ignore their labels (label agreement below half-way between chance
  and perfect) is named, whatever the principles say.

"Clearly" means at `dse.stats.CONFIDENCE` (`stats.compare`, Welch's interval of the difference of means);
a comparison with an unknown spread (one seed, no bootstrap) is "cannot tell". Points are compared only
with points trained the same way (same data set, steps, guidance, and setup/loss where those are not
what the principle varies). Imports neither torch nor ray; pandas only inside functions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dse import stats
from dse.pareto import DEFAULT_OBJECTIVES, FRONT, TIED, noise_aware_front
from dse.store import COLUMN_NAMES, is_null

if TYPE_CHECKING:
    import pandas as pd

HOLDS, DOES_NOT_HOLD, CANNOT_TELL = "holds", "does not hold", "cannot tell (tied)"
VERDICTS = (HOLDS, DOES_NOT_HOLD, CANNOT_TELL)

SIMILAR_PARAMS = 0.2  # points of "about the same size": within +-20% params of each other (Fig. 3, Table 2 groups)
PAPER_SEPARATES = 0.05  # Table 6 orders only the pairs the paper's FIDs set more than 5% apart
LOSS_ORDER = ("lpips", "l2", "l1")  # paper Table 1, best first
SETUP_ORDER = ("get", "dmd")  # paper Table 1, with LPIPS, best first
DEFAULT_NUM_CLASSES = 10

PAPER_TABLE1 = "paper Table 1 (CIFAR-10): GET L1 45.60, L2 42.73, LPIPS 18.30; DMD LPIPS 20.92"
PAPER_TABLE2 = ("paper Table 2 (0.42M): proposed 5-64-8 FID 29.14 at 198.7 s; deep 9-48-6 28.52 at 259.0 s; "
                "wide 2-96-8 34.78 at 123.6 s")
PAPER_FIG3AB = ("paper Fig. 3a-b, Table 2 (0.42M): wider 1-128-8 57.07, wide 2-96-8 34.78, 5-64-8 29.14, "
                "deep 9-48-6 28.52, deeper 21-32-4 32.81: both extremes worse")
PAPER_FIG3C = "paper Fig. 3c (d 6, w 128): a sweet spot in the middle of the head counts"
PAPER_TABLE3 = "paper Table 3: baseline 14.03; TA only 13.99; TA + features 14.36, 14.28"
PAPER_TABLE4 = "paper Table 4: baseline 14.03; MI1 (3, 6) 14.49; MI1 (2, 4, 6) 14.32"
PAPER_TABLE6_TEXT = "paper Table 6 (CIFAR-10, 100 epochs, latency for 50k images on Jetson Orin)"
PAPER_COLLAPSE = "a student whose samples ignore their labels is no class-conditional model (paper App. C)"

# Where LPIPS is known not to apply (docs/findings.md): below this image side, one-step students trained
# with LPIPS alone ignored their labels in every run here, while the LPIPS path itself is sound.
LPIPS_MIN_IMAGE_SIZE = 32


def plan_notes(losses: Iterable[str], image_size: int) -> list[str]:
    """What a user should know before a study runs, from what it will train: LPIPS on images smaller
    than `LPIPS_MIN_IMAGE_SIZE` (the digits' 8x8) gives students that ignore their labels."""
    if "lpips" in set(losses) and image_size < LPIPS_MIN_IMAGE_SIZE:
        return [f"LPIPS on {image_size}x{image_size} images: students trained with it ignored their labels in every "
                f"run on digits (docs/findings.md); the findings and the report flag a collapsed student, and l2 "
                f"answers short CPU studies"]
    return []


# Paper Table 6: (group, depth, width, heads) -> (FID, IS), 100 epochs.
PAPER_TABLE6: dict[tuple[str, int, int, int], tuple[float, float]] = {
    ("0.42M", 1, 128, 8): (57.07, 6.38), ("0.42M", 2, 96, 8): (34.78, 7.48), ("0.42M", 5, 64, 4): (29.66, 7.76),
    ("0.42M", 5, 64, 8): (29.14, 7.79), ("0.42M", 9, 48, 6): (28.52, 7.78), ("0.42M", 21, 32, 4): (32.81, 7.41),
    ("2.2M", 3, 192, 12): (16.40, 8.78), ("2.2M", 7, 128, 8): (13.95, 8.90), ("2.2M", 13, 96, 8): (12.76, 8.92),
    ("5M", 4, 256, 16): (11.74, 9.04), ("5M", 16, 128, 8): (10.25, 9.15), ("5M", 7, 192, 12): (10.32, 9.16),
}


@dataclass(frozen=True)
class Finding:
    """One principle checked on a study: `principle` a short id, `question` what was asked, `verdict`
    one of VERDICTS, `evidence` one or two lines with the numbers and intervals, `paper` the paper's
    figure, and `details` more lines (one per pair compared, or a table's rows)."""

    principle: str
    question: str
    verdict: str
    evidence: str
    paper: str
    details: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        """The finding as plain JSON-ready values."""
        out = asdict(self)
        out["details"] = list(self.details)
        return out


# ---------------------------------------------------------------------------------------- helpers
def _name(p: dict) -> str:
    return f"d{_int(p.get('depth'))}-w{_int(p.get('width'))}-h{_int(p.get('heads'))}"


def _int(value: Any) -> str:
    return "?" if is_null(value) else str(int(value))


def _training(p: dict) -> str:
    """How the point was trained: 'get l2', and the variant's name when it says more than that."""
    setup, loss, variant = (None if is_null(p.get(k)) else str(p[k]) for k in ("setup", "loss", "variant"))
    words = [w for w in (setup, loss) if w]
    if variant and variant != f"{setup}-{loss}":
        words.append(f"({variant})")
    return " ".join(words)


def _label(p: dict) -> str:
    """The point's architecture and training: 'd4-w48-h6 get l2'."""
    return " ".join(w for w in (_name(p), _training(p)) if w)


def _num(value: float) -> str:
    """Three significant digits, at least one decimal for numbers below 1,000."""
    if not math.isfinite(value):
        return "?"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    decimals = max(0, 2 - math.floor(math.log10(abs(value)))) if value else 1
    return f"{value:.{min(decimals, 6)}f}"


def format_estimate(est: stats.Estimate) -> str:
    """'18.3 [17.1, 19.5] (n=3)': the mean and the CONFIDENCE interval of the mean (n when more than one
    row); '18.3 (no interval)' when the spread is unknown; '?' when there is no value."""
    if est.n == 0 or not math.isfinite(est.mean):
        return "?"
    n = f" (n={est.n})" if est.n > 1 else ""
    if not est.known:
        return f"{_num(est.mean)} (no interval){n}"
    return f"{_num(est.mean)} [{_num(est.low)}, {_num(est.high)}]{n}"


def _fid(p: dict) -> stats.Estimate:
    return stats.estimate_of(p, "fid")


AGREES, DISAGREES, UNSURE = "agrees", "disagrees", "tied"


def _expect_less(a: stats.Estimate, b: stats.Estimate) -> str:
    """Whether a < b (the paper's claim) is what the data say: AGREES (clearly less), DISAGREES
    (clearly greater), UNSURE (tied, or a spread unknown)."""
    outcome = stats.compare(a, b)
    return AGREES if outcome == stats.LESS else DISAGREES if outcome == stats.GREATER else UNSURE


def _overall(outcomes: Iterable[str]) -> str:
    """Every comparison agrees: holds; any clearly against: does not hold; else cannot tell."""
    outcomes = list(outcomes)
    if any(o == DISAGREES for o in outcomes):
        return DOES_NOT_HOLD
    if outcomes and all(o == AGREES for o in outcomes):
        return HOLDS
    return CANNOT_TELL


_PAIR_VERDICT = {AGREES: HOLDS, DISAGREES: DOES_NOT_HOLD, UNSURE: CANNOT_TELL}


def _fid_valid(p: dict) -> bool:
    return not is_null(p.get("fid")) and math.isfinite(float(p["fid"]))


def _groups(points: list[dict], keys: Sequence[str]) -> dict[tuple, list[dict]]:
    """The points with a FID, grouped by the values of `keys` (missing values group together)."""
    out: dict[tuple, list[dict]] = {}
    for p in points:
        if _fid_valid(p):
            out.setdefault(tuple(None if is_null(p.get(k)) else p.get(k) for k in keys), []).append(p)
    return out


TRAINING = ("dataset", "steps", "guidance")  # what every compared pair shares
RUN = (*TRAINING, "setup", "loss", "variant")  # ... and for architecture principles, the whole training


def _best(points: Sequence[dict]) -> dict:
    return min(points, key=lambda p: float(p["fid"]))


def _size_groups(points: Sequence[dict]) -> list[list[dict]]:
    """Points of about the same size: sorted by params, a group holds the points within SIMILAR_PARAMS
    above its smallest one."""
    ordered = sorted((p for p in points if not is_null(p.get("params"))), key=lambda p: float(p["params"]))
    groups: list[list[dict]] = []
    for p in ordered:
        if groups and float(p["params"]) <= float(groups[-1][0]["params"]) * (1 + SIMILAR_PARAMS):
            groups[-1].append(p)
        else:
            groups.append([p])
    return groups


# --------------------------------------------------------------------------------------- principles
def _order_finding(points: list[dict], varied: str, order: Sequence[str], principle: str, question: str,
                   paper: str, fixed: Sequence[str]) -> list[Finding]:
    """Points that differ only in `varied` (the others share `fixed`): the paper's `order`, best first,
    checked pair by pair; one finding per group with two or more of the ordered values."""
    out = []
    for key, group in _groups(points, fixed).items():
        by_value: dict[str, list[dict]] = {}
        for p in group:
            value = str(p.get(varied) or "").lower()
            if value in order:
                by_value.setdefault(value, []).append(p)
        present = [v for v in order if v in by_value]
        if len(present) < 2:
            continue
        best = {v: _best(by_value[v]) for v in present}  # one point per value: its best, if several
        outcomes, details = [], []
        for i, better in enumerate(present):
            for worse in present[i + 1:]:
                a, b = _fid(best[better]), _fid(best[worse])
                o = _expect_less(a, b)
                outcomes.append(o)
                details.append(f"{better} < {worse}: {_PAIR_VERDICT[o]} ({better} {format_estimate(a)} vs "
                                f"{worse} {format_estimate(b)})")
        where = " ".join([_name(group[0]), *(str(group[0][k]) for k in ("setup", "loss") if k in fixed)])
        evidence = f"{where}: " + "; ".join(f"{v} {format_estimate(_fid(best[v]))}" for v in present)
        out.append(Finding(principle, question, _overall(outcomes), evidence, paper, tuple(details)))
    return out


def _losses(points: list[dict]) -> list[Finding]:
    return _order_finding(
        points, "loss", LOSS_ORDER, "losses",
        "Does LPIPS give the lowest FID, then L2, then L1 (same student, same setup)?", PAPER_TABLE1,
        ("dataset", "depth", "width", "heads", "setup", "steps", "guidance"),
    )


def _setups(points: list[dict]) -> list[Finding]:
    return _order_finding(
        points, "setup", SETUP_ORDER, "setups",
        "Does GET give a lower FID than DMD (same student, same loss)?", PAPER_TABLE1,
        ("dataset", "depth", "width", "heads", "loss", "steps", "guidance"),
    )


def _latency_text(p: dict, ref: dict) -> str:
    lp, lr = stats.estimate_of(p, "latency_s"), stats.estimate_of(ref, "latency_s")
    if not (math.isfinite(lp.mean) and math.isfinite(lr.mean)) or lr.mean <= 0:
        return "latency not measured"
    return f"latency {_num(lp.mean)} s vs {_num(lr.mean)} s of {_name(ref)} ({lp.mean / lr.mean:.2f}x)"


def _front_words(p: dict) -> str:
    status = p.get("front_status")
    if status == FRONT:
        return "on the front"
    if status == TIED:
        return "tied with the front (within noise)"
    by = p.get("dominated_by")
    return "dominated" + (f" by {', '.join(map(str, by))}" if isinstance(by, (list, tuple)) and by else "")


_COMPARED = {stats.LESS: "better", stats.GREATER: "clearly worse", stats.TIED: "tied"}


def _design_rule(points: list[dict]) -> list[Finding]:
    """Each proposed point against the points of its training within +-SIMILAR_PARAMS of its size."""
    out = []
    for group in _groups(points, RUN).values():
        ranked = {p["candidate_id"]: p for p in _front(group)} if len(group) > 1 else {}
        for rule in (ranked.get(p["candidate_id"], p) for p in group if _true(p.get("proposed"))):
            size = float(rule["params"])
            peers = [p for p in group if abs(float(p["params"]) - size) <= SIMILAR_PARAMS * size]
            if len(peers) > 1:
                out.append(_design_rule_finding(rule, peers))
    return out


def _design_rule_finding(rule: dict, peers: list[dict]) -> Finding:
    on_front = rule.get("front_status") in (FRONT, TIED, None)  # None: a latency is missing, FID decides
    best = _best(peers)
    fid, where = _fid(rule), _label(rule)
    if best["candidate_id"] == rule["candidate_id"]:
        runner = _best([p for p in peers if p["candidate_id"] != rule["candidate_id"]])
        clear = _expect_less(fid, _fid(runner)) == AGREES
        verdict = HOLDS if on_front else DOES_NOT_HOLD
        evidence = (f"{where} has the best FID at its size, {format_estimate(fid)}; next {_name(runner)} "
                    f"{format_estimate(_fid(runner))} ({'clearly better' if clear else 'within noise'}); "
                    f"{_front_words(rule)}")
    else:
        o = stats.compare(fid, _fid(best))
        if not (fid.known and _fid(best).known):
            verdict = CANNOT_TELL
        else:
            verdict = DOES_NOT_HOLD if o == stats.GREATER or not on_front else HOLDS
        evidence = (f"{where} FID {format_estimate(fid)} vs the best at its size {_name(best)} "
                    f"{format_estimate(_fid(best))} ({_COMPARED[o]}); {_front_words(rule)}; "
                    f"{_latency_text(rule, best)}")
    details = tuple(
        f"{_name(p)}: params {int(p['params']):,}, FID {format_estimate(_fid(p))}, "
        + ("the design rule" if p["candidate_id"] == rule["candidate_id"] else _latency_text(p, rule))
        for p in sorted(peers, key=lambda p: float(p["params"]))
    )
    return Finding(
        "design-rule",
        "Is the design rule's architecture on the front, its FID tied with (or better than) the best at its size "
        f"(within +-{SIMILAR_PARAMS:.0%} params)?",
        verdict, evidence, PAPER_TABLE2, details)


def _true(value: Any) -> bool:
    return not is_null(value) and bool(value)


def _front(group: list[dict]) -> list[dict]:
    """The group's points with the noise-aware front's columns (front_status, dominated_by, ...)."""
    import pandas as pd

    return noise_aware_front(pd.DataFrame(group)).to_dict("records")


def _extremes_finding(middle: list[dict], extremes: tuple[dict, dict], names: tuple[str, str], principle: str,
                      question: str, paper: str, what: str) -> Finding:
    """Both `extremes` (each the best point of its kind) against the best point of `middle`."""
    mid = _best(middle)
    outcomes, details = [], []
    for extreme, label in zip(extremes, names):
        o = _expect_less(_fid(mid), _fid(extreme))
        outcomes.append(o)
        details.append(f"{label} {_name(extreme)} {format_estimate(_fid(extreme))} vs {_name(mid)}: "
                       f"{'clearly worse' if o == AGREES else 'clearly better' if o == DISAGREES else 'tied'}")
    evidence = (f"{what}: best in the middle {_name(mid)} {format_estimate(_fid(mid))}; "
                + "; ".join(f"{label} {_name(e)} {format_estimate(_fid(e))}" for e, label in zip(extremes, names)))
    return Finding(principle, question, _overall(outcomes), evidence, paper, tuple(details))


def _depth_width(points: list[dict]) -> list[Finding]:
    out = []
    for key, group in _groups(points, RUN).items():
        for sized in _size_groups(group):
            depths = sorted({int(p["depth"]) for p in sized})
            if len(depths) < 3:
                continue
            deep = _best([p for p in sized if int(p["depth"]) == depths[-1]])
            wide = _best([p for p in sized if int(p["depth"]) == depths[0]])
            middle = [p for p in sized if depths[0] < int(p["depth"]) < depths[-1]]
            lo, hi = min(int(p["params"]) for p in sized), max(int(p["params"]) for p in sized)
            out.append(_extremes_finding(
                middle, (deep, wide), ("deepest", "widest"), "depth-width",
                "At about fixed params, are both the deepest-narrowest and the shallowest-widest clearly worse "
                "than the best between them?", PAPER_FIG3AB,
                f"{_training(sized[0])}, params {lo:,}-{hi:,}"))
    return out


def _heads(points: list[dict]) -> list[Finding]:
    out = []
    for key, group in _groups(points, (*RUN, "depth", "width")).items():
        heads = sorted({int(p["heads"]) for p in group})
        if len(heads) < 3:
            continue
        few = _best([p for p in group if int(p["heads"]) == heads[0]])
        many = _best([p for p in group if int(p["heads"]) == heads[-1]])
        middle = [p for p in group if heads[0] < int(p["heads"]) < heads[-1]]
        out.append(_extremes_finding(
            middle, (few, many), ("fewest heads", "most heads"), "heads",
            "For one depth and width, does a middle head count beat the fewest and the most heads?",
            PAPER_FIG3C, f"d{_int(group[0]['depth'])}-w{_int(group[0]['width'])} {_training(group[0])}".strip()))
    return out


def _methods(points: list[dict]) -> list[Finding]:
    """TA and MI1 points against the GET point of the same student and loss."""
    out = []
    for key, group in _groups(points, ("dataset", "depth", "width", "heads", "loss", "steps", "guidance")).items():
        bases = [p for p in group if str(p.get("setup")) == "get"]
        if not bases:
            continue
        base = _best(bases)
        for p in group:
            setup = str(p.get("setup"))
            if setup not in ("ta", "mi1"):
                continue
            a, b = _fid(p), _fid(base)
            o = stats.compare(a, b)
            unknown = not (a.known and b.known)
            if setup == "ta":  # the paper: TA alone gives at most a marginal gain (13.99 vs 14.03), features none
                verdict = CANNOT_TELL if unknown else DOES_NOT_HOLD if o == stats.LESS else HOLDS
                question = "Is TA no clear gain over the GET baseline of the same student?"
                paper = PAPER_TABLE3
            else:  # the paper: MI1 is worse than the baseline
                verdicts = {stats.GREATER: HOLDS, stats.LESS: DOES_NOT_HOLD}
                verdict = CANNOT_TELL if unknown else verdicts.get(o, CANNOT_TELL)
                question = "Is MI1 worse than the GET baseline of the same student?"
                paper = PAPER_TABLE4
            words = {stats.LESS: "clearly better", stats.GREATER: "clearly worse"}.get(o, "tied")
            evidence = (f"{_label(p)} FID {format_estimate(a)} vs baseline {_label(base)} "
                        f"{format_estimate(b)}: {setup.upper()} {words}")
            out.append(Finding(setup, question, verdict, evidence, paper))
    return out


def _table6(points: list[dict]) -> list[Finding]:
    out = []
    for key, group in _groups(points, RUN).items():
        if str(key[0]).lower() != "cifar10":
            continue
        matched = []
        for (size, d, w, h), (fid, is_) in PAPER_TABLE6.items():
            hits = [p for p in group if (int(p["depth"]), int(p["width"]), int(p["heads"])) == (d, w, h)]
            if hits:
                matched.append((size, _best(hits), fid, is_))
        if not matched:
            continue
        details = [f"{size:>5}  d{_int(p['depth'])}-w{_int(p['width'])}-h{_int(p['heads'])}  study FID "
                   f"{format_estimate(_fid(p))}  paper FID {fid:.2f}  IS {is_:.2f}" for size, p, fid, is_ in matched]
        outcomes = []
        for i, (size_a, pa, fa, _) in enumerate(matched):
            for size_b, pb, fb, _ in matched[i + 1:]:
                if size_a != size_b or abs(fa - fb) <= PAPER_SEPARATES * min(fa, fb):
                    continue
                better, worse = (pa, pb) if fa < fb else (pb, pa)
                outcomes.append(_expect_less(_fid(better), _fid(worse)))
        counts = {k: outcomes.count(k) for k in (AGREES, DISAGREES, UNSURE)}
        evidence = (f"{len(matched)} of Table 6's architectures trained ({_training(group[0])}); of the "
                    f"{len(outcomes)} pairs the paper sets more than {PAPER_SEPARATES:.0%} apart in FID, "
                    f"{counts[AGREES]} agree, {counts[DISAGREES]} are reversed, {counts[UNSURE]} tied")
        out.append(Finding("table6", "Does the study order Table 6's architectures by FID as the paper does?",
                           _overall(outcomes), evidence, PAPER_TABLE6_TEXT, tuple(details)))
    return out


def collapse_threshold(num_classes: int) -> float:
    """The label agreement below which samples are taken to ignore their labels: half-way between
    chance (1/K) and perfect (1)."""
    return (1 / num_classes + 1) / 2


def _collapse(points: list[dict], num_classes: int) -> list[Finding]:
    limit = collapse_threshold(num_classes)
    out = []
    for p in points:
        agreement = p.get("label_agreement")
        if is_null(agreement) or not math.isfinite(float(agreement)) or float(agreement) >= limit:
            continue
        evidence = (f"{_label(p)}: label agreement {float(agreement):.2f} "
                    f"(chance {1 / num_classes:.2f}, collapsed below {limit:.2f}); FID {format_estimate(_fid(p))}")
        out.append(Finding("collapse", f"collapsed: samples ignore their labels ({_name(p)})", DOES_NOT_HOLD,
                           evidence, PAPER_COLLAPSE))
    return out


PRINCIPLES: tuple[Callable[[list[dict]], list[Finding]], ...] = (
    _losses, _setups, _design_rule, _depth_width, _heads, _methods, _table6,
)


# ---------------------------------------------------------------------------------------------- API
def _num_classes(rows: pd.DataFrame) -> int:
    if "num_classes" in rows.columns:
        known = [int(v) for v in rows["num_classes"] if not is_null(v) and int(v) > 1]
        if known:
            return max(set(known), key=known.count)
    return DEFAULT_NUM_CLASSES


def with_unknown_spreads(rows: pd.DataFrame, objectives: Sequence[str] = DEFAULT_OBJECTIVES) -> pd.DataFrame:
    """`rows` with each objective's per-row SD column of the store (`fid_std`) added as empty where the
    frame lacks it (rows written before it existed): one such row's FID then has no interval, instead
    of being taken as exact by `stats.group_points`."""
    missing = [f"{o}_std" for o in objectives if f"{o}_std" in COLUMN_NAMES and f"{o}_std" not in rows.columns]
    return rows.assign(**dict.fromkeys(missing, math.nan)) if missing and len(rows.columns) else rows


def findings(rows: pd.DataFrame) -> list[Finding]:
    """The findings the study's rows (one per trial, any status) can speak to, in the order of
    PRINCIPLES, then the collapsed points; [] when no complete row has a FID."""
    rows = with_unknown_spreads(rows)
    points_df = stats.group_points(rows)
    if not len(points_df):
        return []
    points = [{k: _plain(v) for k, v in p.items()} for p in points_df.to_dict("records")]
    out: list[Finding] = []
    for principle in PRINCIPLES:
        out += principle(points)
    return out + _collapse(points, _num_classes(rows))


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") and hasattr(value, "dtype") and getattr(value, "ndim", 1) == 0 \
        else value


def study_findings(name: str, results_dir: str | Path = "results") -> list[Finding]:
    """The findings of the study stored in `results_dir/name` (a DseError when there is none)."""
    from dse.query import study_results

    return findings(study_results(name, results_dir, columns=["*"]))


def format_findings(items: Sequence[Finding]) -> str:
    """The findings as plain text blocks for a terminal: the verdict and question, then the evidence,
    the details and the paper's figure, indented."""
    if not items:
        return ("no findings: the study has no complete points that a principle of the paper can speak to "
                "(e.g. two losses, or several architectures trained the same way)")
    blocks = []
    for f in items:
        lines = [f"[{f.verdict}] {f.principle}: {f.question}", f"    {f.evidence}"]
        lines += [f"      {d}" for d in f.details]
        lines.append(f"    {f.paper}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
