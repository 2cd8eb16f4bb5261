"""Tests of dse.findings on hand-made rows whose truth is known: clear wins hold, overlaps cannot be
told, reversals do not hold, a collapsed student is named, and absent data gives no finding."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from dse.errors import DseError
from dse.findings import (
    CANNOT_TELL, DOES_NOT_HOLD, HOLDS, Finding, collapse_threshold, findings, format_findings, study_findings,
)
from dse.store import ResultsStore


def _rows(depth, width, heads, fids, *, setup="get", loss="l2", params=200_000, latency=None, proposed=False,
          dataset="digits", label_agreement=0.95, steps=600, fid_std=None, **extra) -> list[dict]:
    """One row per training seed of one point (candidate = architecture x setup x loss)."""
    cid = f"d{depth}-w{width}-h{heads}-{setup}-{loss}-{extra.get('variant', '')}"
    return [
        {
            "trial_id": f"{cid}-s{seed}", "status": "complete", "candidate_id": cid, "seed": seed,
            "dataset": dataset, "num_classes": 10, "depth": depth, "width": width, "heads": heads, "mlp_ratio": 4.0,
            "setup": setup, "loss": loss, "variant": extra.get("variant", f"{setup}-{loss}"), "steps": steps,
            "guidance": 1.5, "params": params, "fid": fid, "fid_std": fid_std,
            "latency_s": latency if latency is not None else 0.01 * depth, "proposed": proposed,
            "label_agreement": label_agreement,
        }
        for seed, fid in enumerate(fids)
    ]


def _df(*points: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([row for rows in points for row in rows])


def _only(found: list[Finding], principle: str) -> Finding:
    [f] = [f for f in found if f.principle == principle]
    return f


# ------------------------------------------------------------------------------------------ losses
def test_a_clear_lpips_win_holds_pair_by_pair():
    df = _df(_rows(4, 48, 6, [18.0, 18.6, 19.1], loss="lpips"), _rows(4, 48, 6, [42.0, 43.1, 42.6], loss="l2"),
             _rows(4, 48, 6, [45.2, 46.0, 45.5], loss="l1"))
    f = _only(findings(df), "losses")
    assert f.verdict == HOLDS
    assert [d.split(":")[0] for d in f.details] == ["lpips < l2", "lpips < l1", "l2 < l1"]
    assert len(f.details) == 3 and all(": holds (" in d for d in f.details)
    assert "lpips 18.6 [" in f.evidence and "l1 45.6 [" in f.evidence and "Table 1" in f.paper


def test_overlapping_losses_cannot_be_told():
    df = _df(_rows(4, 48, 6, [30.0, 40.0, 50.0], loss="lpips"), _rows(4, 48, 6, [35.0, 45.0, 55.0], loss="l2"))
    f = _only(findings(df), "losses")
    assert f.verdict == CANNOT_TELL and f.details == (f.details[0],) and "cannot tell" in f.details[0]


def test_the_opposite_order_does_not_hold():
    # the digits run: LPIPS collapsed (FID ~1,000) while L1 and L2 gave ~90
    df = _df(_rows(4, 48, 6, [1020.0, 1010.0, 1031.0], loss="lpips"), _rows(4, 48, 6, [97.9, 96.4, 97.0], loss="l2"),
             _rows(4, 48, 6, [88.6, 82.6, 85.0], loss="l1"))
    f = _only(findings(df), "losses")
    assert f.verdict == DOES_NOT_HOLD
    verdicts = {d.split(":")[0]: d.split(":")[1].split("(")[0].strip() for d in f.details}
    assert verdicts == {"lpips < l2": DOES_NOT_HOLD, "lpips < l1": DOES_NOT_HOLD, "l2 < l1": DOES_NOT_HOLD}


def test_one_seed_without_a_bootstrap_cannot_tell_even_far_apart():
    df = _df(_rows(4, 48, 6, [18.0], loss="lpips"), _rows(4, 48, 6, [42.0], loss="l2"))
    f = _only(findings(df), "losses")
    assert f.verdict == CANNOT_TELL and "no interval" in f.evidence


def test_rows_from_before_fid_std_existed_have_no_interval():
    df = _df(_rows(4, 48, 6, [18.0], loss="lpips"), _rows(4, 48, 6, [42.0], loss="l2")).drop(columns="fid_std")
    assert _only(findings(df), "losses").verdict == CANNOT_TELL


def test_one_seed_with_a_bootstrap_sd_can_tell():
    df = _df(_rows(4, 48, 6, [18.0], loss="lpips", fid_std=0.5), _rows(4, 48, 6, [42.0], loss="l2", fid_std=0.5))
    assert _only(findings(df), "losses").verdict == HOLDS


def test_a_study_with_one_loss_gives_no_loss_finding():
    df = _df(_rows(4, 48, 6, [36.1, 33.6, 35.3]), _rows(9, 32, 4, [36.3, 36.7, 33.5]))
    assert not [f for f in findings(df) if f.principle in ("losses", "setups")]


def test_losses_are_compared_only_within_one_architecture():
    df = _df(_rows(4, 48, 6, [18.0, 18.5, 19.0], loss="lpips"), _rows(9, 32, 4, [42.0, 42.5, 43.0], loss="l2"))
    assert not [f for f in findings(df) if f.principle == "losses"]


def test_get_against_dmd():
    df = _df(_rows(4, 48, 6, [18.0, 18.5, 19.0], loss="lpips"),
             _rows(4, 48, 6, [25.0, 24.0, 26.0], loss="lpips", setup="dmd"))
    assert _only(findings(df), "setups").verdict == HOLDS


# ------------------------------------------------------------------------------------- design rule
# The demo: five architectures at ~200k params, three training seeds each.
DEMO = {
    (8, 32, 4): [43.4, 36.8, 36.0], (2, 64, 8): [35.8, 36.7, 39.1], (9, 32, 4): [36.3, 36.7, 33.5],
    (4, 48, 6): [36.1, 33.6, 35.3], (10, 32, 4): [34.4, 34.8, 33.9],
}


def _demo(overrides: dict | None = None) -> pd.DataFrame:
    fids = {**DEMO, **(overrides or {})}
    return _df(*(_rows(d, w, h, f, proposed=(d, w, h) == (4, 48, 6), params=190_000 + 1000 * d, latency=0.02 * d)
                 for (d, w, h), f in fids.items()))


def test_design_rule_tied_with_the_best_fid_holds():
    f = _only(findings(_demo()), "design-rule")
    # best mean: d10-w32-h4 34.4; the proposed d4-w48-h6 35.0 lies within the noise of it
    assert f.verdict == HOLDS
    assert "d4-w48-h6 get l2 FID 35.0 [" in f.evidence and "best at its size d10-w32-h4 34.4 [" in f.evidence
    assert "(tied)" in f.evidence and "latency 0.0800 s vs 0.200 s of d10-w32-h4 (0.40x)" in f.evidence
    assert len(f.details) == 5


def test_design_rule_clearly_worse_than_the_best_does_not_hold():
    f = _only(findings(_demo({(4, 48, 6): [45.0, 45.5, 46.0]})), "design-rule")
    assert f.verdict == DOES_NOT_HOLD and "clearly worse" in f.evidence


def test_design_rule_with_the_best_fid_holds():
    f = _only(findings(_demo({(4, 48, 6): [20.0, 20.5, 21.0]})), "design-rule")
    assert f.verdict == HOLDS and "has the best FID at its size" in f.evidence and "clearly better" in f.evidence


def test_no_proposed_point_gives_no_design_rule_finding():
    df = _demo()
    df["proposed"] = False
    assert not [f for f in findings(df) if f.principle == "design-rule"]


# ---------------------------------------------------------------------------- depth vs width, heads
def test_depth_width_both_extremes_clearly_worse_holds():
    df = _demo({(2, 64, 8): [50.0, 51.0, 50.5], (10, 32, 4): [45.0, 46.0, 45.5]})
    f = _only(findings(df), "depth-width")
    assert f.verdict == HOLDS
    assert "deepest d10-w32-h4" in f.details[0] and "clearly worse" in f.details[0]
    assert "widest d2-w64-h8" in f.details[1] and "clearly worse" in f.details[1]


def test_depth_width_on_the_demo_numbers_cannot_tell():
    assert _only(findings(_demo()), "depth-width").verdict == CANNOT_TELL


def test_depth_width_an_extreme_clearly_best_does_not_hold():
    df = _demo({(10, 32, 4): [20.0, 20.5, 21.0]})
    assert _only(findings(df), "depth-width").verdict == DOES_NOT_HOLD


def test_depth_width_needs_similar_params():
    rows = [_rows(d, 32, 4, [30.0 + d, 31.0 + d, 30.5 + d], params=100_000 * 2**d) for d in (1, 2, 3)]
    assert not [f for f in findings(_df(*rows)) if f.principle == "depth-width"]


def test_heads_sweet_spot_in_the_middle():
    df = _df(_rows(6, 128, 2, [30.0, 31.0, 30.5]), _rows(6, 128, 4, [20.0, 21.0, 20.5]),
             _rows(6, 128, 8, [29.0, 28.0, 28.5]))
    f = _only(findings(df), "heads")
    assert f.verdict == HOLDS and "best in the middle d6-w128-h4 20.5" in f.evidence
    two_heads = _df(_rows(6, 128, 2, [30.0, 31.0, 30.5]), _rows(6, 128, 4, [20.0, 21.0, 20.5]))
    assert not [f for f in findings(two_heads) if f.principle == "heads"]


# --------------------------------------------------------------------------------------- TA, MI1
def test_ta_and_mi1_against_the_baseline():
    df = _df(
        _rows(6, 128, 4, [14.0, 14.1, 13.9], loss="lpips", variant="baseline"),
        _rows(6, 128, 4, [14.0, 13.9, 14.05], loss="lpips", setup="ta", variant="ta"),  # tied: no clear gain
        _rows(6, 128, 4, [16.0, 16.2, 16.1], loss="lpips", setup="mi1", variant="mi1-3-6"),  # clearly worse
    )
    found = findings(df)
    assert _only(found, "ta").verdict == HOLDS and "TA tied" in _only(found, "ta").evidence
    assert _only(found, "mi1").verdict == HOLDS and "MI1 clearly worse" in _only(found, "mi1").evidence
    better = _df(_rows(6, 128, 4, [14.0, 14.1, 13.9], loss="lpips"),
                 _rows(6, 128, 4, [10.0, 10.1, 9.9], loss="lpips", setup="mi1"))
    assert _only(findings(better), "mi1").verdict == DOES_NOT_HOLD


# ----------------------------------------------------------------------------------------- Table 6
def test_table6_on_cifar10_lists_the_paper_beside_the_study():
    df = _df(*(_rows(d, w, h, [f - 0.5, f, f + 0.5], dataset="cifar10", params=420_000)
               for (d, w, h), f in {(1, 128, 8): 57.0, (2, 96, 8): 35.0, (5, 64, 8): 29.0}.items()))
    f = _only(findings(df), "table6")
    assert f.verdict == HOLDS and len(f.details) == 3
    assert any("d5-w64-h8" in d and "paper FID 29.14  IS 7.79" in d for d in f.details)
    assert "3 agree, 0 are reversed" in f.evidence
    assert not [f for f in findings(df.assign(dataset="digits")) if f.principle == "table6"]


# ---------------------------------------------------------------------------------------- collapse
def test_a_collapsed_student_is_detectable_from_its_findings():
    df = _df(_rows(4, 48, 6, [1020.0, 1010.0], loss="lpips", label_agreement=0.18),
             _rows(4, 48, 6, [97.9, 96.4], loss="l2", label_agreement=0.93))
    collapsed = [f for f in findings(df) if f.principle == "collapse"]
    assert len(collapsed) == 1 and collapsed[0].verdict == DOES_NOT_HOLD
    assert collapsed[0].question == "collapsed: samples ignore their labels (d4-w48-h6)"
    assert "lpips" in collapsed[0].evidence and "label agreement 0.18" in collapsed[0].evidence
    assert collapse_threshold(10) == pytest.approx(0.55) and collapse_threshold(2) == pytest.approx(0.75)


def test_collapse_uses_the_number_of_classes_of_the_rows():
    rows = _rows(4, 48, 6, [40.0], label_agreement=0.6)  # above chance for 2 classes' threshold? 0.6 < 0.75
    df = _df(rows).assign(num_classes=2)
    assert [f.principle for f in findings(df)] == ["collapse"]
    assert not findings(_df(rows))  # with 10 classes 0.6 is above 0.55


# ---------------------------------------------------------------------------------- output and API
def test_no_complete_rows_give_no_findings_and_a_plain_message():
    df = _df(_rows(4, 48, 6, [30.0])).assign(status="failed", fid=None)
    assert findings(df) == [] and findings(pd.DataFrame()) == []
    assert format_findings([]).startswith("no findings")


def test_format_and_to_dict():
    df = _df(_rows(4, 48, 6, [18.0, 18.6, 19.1], loss="lpips"), _rows(4, 48, 6, [42.0, 43.1, 42.6], loss="l2"))
    found = findings(df)
    text = format_findings(found)
    assert text.splitlines()[0] == ("[holds] losses: Does LPIPS give the lowest FID, then L2, then L1 "
                                    "(same student, same setup)?")
    assert "lpips < l2: holds" in text and "paper Table 1" in text
    d = json.loads(json.dumps([f.to_dict() for f in found]))
    assert d[0]["verdict"] == "holds" and d[0]["principle"] == "losses" and isinstance(d[0]["details"], list)


def test_study_findings_reads_the_store_and_a_missing_study_is_a_dse_error(tmp_path):
    store = ResultsStore(tmp_path / "results" / "s" / "trials")
    for row in _rows(4, 48, 6, [18.0, 18.6, 19.1], loss="lpips") + _rows(4, 48, 6, [42.0, 43.1, 42.6], loss="l2"):
        store.write(row)
    found = study_findings("s", tmp_path / "results")
    assert [f.principle for f in found] == ["losses"] and found[0].verdict == HOLDS
    with pytest.raises(DseError, match="no study 'nope'"):
        study_findings("nope", tmp_path / "results")
