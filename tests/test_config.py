from pathlib import Path

import pytest

from dse.config import KNOWN_LOSSES, KNOWN_SETUPS, load_study, study_from_dict, with_overrides
from dse.errors import DseError

ROOT = Path(__file__).resolve().parent.parent


def test_demo_space_loads_and_round_trips():
    cfg = load_study(ROOT / "search_spaces" / "demo.toml")
    assert cfg.name == "demo" and cfg.dataset == "digits"
    assert study_from_dict(cfg.to_raw()) == cfg


def test_known_names_match_the_registries():
    from dse.distill.losses import LOSS_NAMES
    from dse.distill.setups import SETUPS

    assert set(KNOWN_LOSSES) == set(LOSS_NAMES)
    assert set(KNOWN_SETUPS) == set(SETUPS)


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"space": {"budget": "5X"}}, "invalid budget"),
        ({"space": {}}, "budget is required"),
        ({"space": {"budget": "1M", "widht": [8]}}, "unknown key"),
        ({"space": {"budget": "1M"}, "trian": {}}, "unknown section"),
        ({"space": {"budget": "1M", "losses": ["l3"]}}, "losses"),
        ({"space": {"budget": "1M", "widths": [6]}}, "multiples of 4"),
        ({"space": {"budget": "1M"}, "train": {"steps": 0}}, "positive"),
        ({"space": {"budget": "1M"}, "train": {"steps": "ten"}}, "wrong type"),
        ({"space": {"budget": "1M", "heads": "some"}}, "heads"),
    ],
)
def test_bad_configs_are_clear_errors(raw, message):
    with pytest.raises(DseError, match=message):
        study_from_dict(raw)


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(DseError, match="not found"):
        load_study(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[space\nbudget=")
    with pytest.raises(DseError, match="not valid TOML"):
        load_study(bad)


def test_overrides_replace_only_given_keys():
    cfg = load_study(ROOT / "search_spaces" / "demo.toml")
    new = with_overrides(cfg, space={"budget": "300k", "lower": None}, train={"steps": 7})
    assert new.space.budget == "300k" and new.train.steps == 7
    assert new.space.lower == cfg.space.lower and new.space.widths == cfg.space.widths
    with pytest.raises(DseError):
        with_overrides(cfg, space={"budget": "5X"})


def test_variants_replace_train_keys_and_replace_the_setup_loss_cross():
    raw = {
        "space": {"budget": "1M", "setups": ["get"], "losses": ["l1", "l2"]},
        "train": {"steps": 9, "lr": 1e-3},
        "variants": [{"name": "base"}, {"name": "mi1-3-6", "setup": "mi1", "mi1_blocks": [3, 6], "mi1_times": [0.5, 0]}],
    }
    cfg = study_from_dict(raw)
    trainings = dict(cfg.trainings())
    assert list(trainings) == ["base", "mi1-3-6"]
    assert trainings["base"].setup == "get" and trainings["base"].steps == 9
    mi1 = trainings["mi1-3-6"]
    assert mi1.setup == "mi1" and mi1.mi1_blocks == (3, 6) and mi1.mi1_times == (0.5, 0) and mi1.lr == 1e-3
    assert study_from_dict(cfg.to_raw()) == cfg
    no_variants = study_from_dict({k: v for k, v in raw.items() if k != "variants"})
    assert [name for name, _ in no_variants.trainings()] == ["get-l1", "get-l2"]


@pytest.mark.parametrize(
    "variants, message",
    [
        ([{"setup": "get"}], "unique name"),
        ([{"name": "a"}, {"name": "a"}], "unique name"),
        ([{"name": "a", "stpes": 3}], "unknown key"),
        ([{"name": "a", "setup": "mi1"}], "variant 'a': setup mi1 needs"),
        ([{"name": "a", "setup": "mi1", "mi1_blocks": [3], "mi1_times": [1.5]}], "fractions of noise"),
        ([{"name": "a", "loss": "l7"}], "variant 'a'"),
    ],
)
def test_bad_variants_are_clear_errors(variants, message):
    with pytest.raises(DseError, match=message):
        study_from_dict({"space": {"budget": "1M"}, "variants": variants})


def test_assignments_read_toml_values_and_apply_as_overrides():
    from dse.config import parse_assignments

    got = parse_assignments(["train.steps=20", "train.mi1_blocks=[3, 6]", "data.dataset=digits", "train.lr=1e-3"])
    assert got == {"train": {"steps": 20, "mi1_blocks": [3, 6], "lr": 1e-3}, "data": {"dataset": "digits"}}
    cfg = with_overrides(load_study(ROOT / "search_spaces" / "demo.toml"), **got)
    assert cfg.train.steps == 20 and cfg.train.mi1_blocks == (3, 6)
    for bad in ("steps=3", "nope.steps=3", "train.steps"):
        with pytest.raises(DseError, match="SECTION.KEY=VALUE"):
            parse_assignments([bad])


def test_the_paper_space_files_describe_tables_1_3_and_4():
    t1 = dict(load_study(ROOT / "search_spaces" / "paper_table1.toml").trainings())
    assert {(t.setup, t.loss) for t in t1.values()} == {("get", "l1"), ("get", "l2"), ("get", "lpips"), ("dmd", "lpips")}
    t3 = load_study(ROOT / "search_spaces" / "paper_table3.toml")
    rows = [(t.setup, t.ta_lambda0, t.ta_lambda1, t.ta_lambda2) for _, t in t3.trainings()]
    # App. B.2: lambda0 != 0 in rows 1 and 4, lambda1 in rows 2-4, lambda2 in rows 3-4
    assert rows == [("get", 1.0, 1.0, 0.0), ("ta", 0.0, 1.0, 0.0), ("ta", 0.0, 1.0, 1.0), ("ta", 1.0, 1.0, 1.0)]
    assert {t.loss for _, t in t3.trainings()} == {"lpips"}
    t4 = dict(load_study(ROOT / "search_spaces" / "paper_table4.toml").trainings())
    assert (t4["mi1-3-6"].mi1_blocks, t4["mi1-3-6"].mi1_times) == ((3, 6), (0.5, 0.0))
    assert (t4["mi1-2-4-6"].mi1_blocks, t4["mi1-2-4-6"].mi1_times) == ((2, 4, 6), (0.66, 0.33, 0.0))
    assert t4["baseline"].setup == "get" and t4["mi1-3-6"].mi1_sigma_min == 0.02
