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
    from dse.distill.losses import LOSSES
    from dse.distill.setups import SETUPS

    assert set(KNOWN_LOSSES) == set(LOSSES)
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
