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


# --- every number, name, device and list element is checked (issue 10) -------------------------

import dataclasses  # noqa: E402
import math  # noqa: E402
from typing import get_type_hints  # noqa: E402

from dse.config import (  # noqa: E402
    RANGES, EvalConfig, RunConfig, SpaceConfig, TeacherConfig, TrainConfig, dataset_geometry, eval_from_dict,
    parse_budget, with_paper_widths,
)

BASE = {"space": {"budget": "200k"}}


def _with(section: str, key: str, value) -> dict:
    raw = {"space": {"budget": "200k"}}
    if section in ("study", "data"):
        raw[section] = {key: value}
    else:
        raw.setdefault(section, {})[key] = value
    return raw


@pytest.mark.parametrize("value", [1, 1.0, 0.25, 2, 0])
def test_resources_take_ints_and_floats_from_toml_and_overrides(value):
    cfg = study_from_dict(_with("run", "cpus_per_trial", value))
    assert cfg.run.cpus_per_trial == value and isinstance(cfg.run.cpus_per_trial, float)
    cfg = with_overrides(study_from_dict(BASE), run={"gpus_per_trial": value, "cpus_per_trial": value})
    assert cfg.run.gpus_per_trial == value and isinstance(cfg.run.gpus_per_trial, float)


@pytest.mark.parametrize("key, value, message", [
    ("cpus_per_trial", -1, "run.cpus_per_trial must be >= 0"),
    ("cpus_per_trial", -0.5, "run.cpus_per_trial must be >= 0"),
    ("gpus_per_trial", -0.5, "run.gpus_per_trial must be >= 0"),
    ("gpus_per_trial", -2, "or -1"),
    ("gpus_per_trial", 1.5, "whole GPUs above"),
    ("gpus_per_trial", float("nan"), "run.gpus_per_trial must be a finite number"),
])
def test_negative_resources_say_the_range_not_the_type(key, value, message):
    with pytest.raises(DseError, match=message) as err:
        study_from_dict(_with("run", key, value))
    assert "wrong type" not in str(err.value)


def test_every_number_of_every_section_has_a_range():
    for section, cls in {"teacher": TeacherConfig, "space": SpaceConfig, "train": TrainConfig, "eval": EvalConfig,
                         "run": RunConfig}.items():
        hints = get_type_hints(cls)
        numeric = {k for k, t in hints.items() if t in (int, float) or str(t) in (
            "tuple[int, ...]", "tuple[float, ...]", "str | tuple[int, ...]")}
        assert numeric - {"widths", "heads", "seeds", "mi1_blocks", "mi1_times"} == {k for k, t in hints.items() if t in (int, float)}
        assert set(RANGES[section]) == numeric, section


def _float_fields():
    for section, cls in {"teacher": TeacherConfig, "space": SpaceConfig, "train": TrainConfig, "eval": EvalConfig,
                         "run": RunConfig}.items():
        for key, kind in get_type_hints(cls).items():
            if kind is float:
                yield section, key


@pytest.mark.parametrize("section, key", list(_float_fields()))
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_no_float_accepts_nan_or_infinity_and_the_key_is_named(section, key, value):
    with pytest.raises(DseError, match=rf"{section}\.{key} must be a finite number"):
        study_from_dict(_with(section, key, value))


@pytest.mark.parametrize("section, key, value, message", [
    ("train", "lr", 0, "train.lr must be positive"),
    ("train", "lr", -1e-4, "train.lr must be positive"),
    ("train", "weight_decay", -0.01, "train.weight_decay must be >= 0"),
    ("train", "dmd_fake_lr", 0, "train.dmd_fake_lr must be positive"),
    ("train", "mi1_sigma_min", 0, "train.mi1_sigma_min must be positive"),
    ("train", "mi1_sigma_min", 90, "mi1_sigma_min must be below train.mi1_sigma_max"),
    ("train", "mi1_rho", -7, "train.mi1_rho must be positive"),
    ("train", "seed", -1, "train.seed must be >= 0"),
    ("train", "checkpoint_every", -1, "train.checkpoint_every must be >= 0"),
    ("train", "epochs", -1, "train.epochs must be >= 0"),
    ("train", "ema_decay", 1.0, r"train.ema_decay must be in \[0, 1\)"),
    ("train", "ta_depth", 0, "train.ta_depth must be >= 1"),
    ("train", "mi1_blocks", [0, 2], "train.mi1_blocks must be >= 1"),
    ("eval", "guidance", -1.5, "eval.guidance must be >= 0"),
    ("eval", "seed", -3, "eval.seed must be >= 0"),
    ("eval", "num_samples", 1, "eval.num_samples must be at least 2"),
    ("teacher", "sigma_min", 0, "teacher.sigma_min must be positive"),
    ("teacher", "sigma_min", 100, "teacher.sigma_min must be below teacher.sigma_max"),
    ("teacher", "rho", 0, "teacher.rho must be positive"),
    ("teacher", "seed", -1, "teacher.seed must be >= 0"),
    ("space", "lower", 0, "space.lower must be positive"),
    ("space", "upper", float("inf"), "space.upper must be a finite number"),
    ("space", "min_width", 2, "space.min_width must be >= 4"),
    ("space", "max_width", 2, "space.max_width must be >= 4"),
    ("space", "min_depth", 0, "space.min_depth must be >= 1"),
    ("space", "mlp_ratio", 0, "space.mlp_ratio must be positive"),
    ("space", "heads", [0, 4], "space.heads must be >= 1"),
    ("space", "heads", [], "heads = \\[\\]"),
    ("run", "halving_eta", 1, "run.halving_eta must be >= 2"),
    ("run", "num_samples", -1, "run.num_samples must be >= 0"),
])
def test_numbers_out_of_range_name_the_key_and_the_range(section, key, value, message):
    with pytest.raises(DseError, match=message):
        study_from_dict(_with(section, key, value))


def test_the_same_rules_hold_in_variants_and_in_eval_from_dict():
    with pytest.raises(DseError, match=r"variant 'a': train.lr must be a finite number"):
        study_from_dict({**BASE, "variants": [{"name": "a", "lr": float("nan")}]})
    with pytest.raises(DseError, match="eval.guidance must be a finite number"):
        eval_from_dict({"guidance": float("nan")})
    with pytest.raises(DseError, match="eval.latency_batch must be positive"):
        eval_from_dict({"latency_batch": 0})


@pytest.mark.parametrize("section, key, value, expected", [
    ("space", "widths", "32", "expected a list of integers"),
    ("space", "widths", ["a"], "expected a list of integers"),
    ("space", "widths", [32.5], "expected a list of integers"),
    ("space", "widths", [True], "expected a list of integers"),
    ("space", "heads", ["x"], "expected a list of integers"),
    ("train", "mi1_times", ["a"], "expected a list of numbers"),
    ("space", "setups", [1], "expected a list of strings"),
    ("space", "losses", [["l2"]], "expected a list of strings"),
    ("data", "patch_size", "2", "expected an integer"),
    ("data", "patch_size", 2.5, "expected an integer"),
    ("data", "dataset", 3, "expected a string"),
    ("study", "name", ["a"], "must be a single value"),
    ("train", "steps", True, "expected an integer"),
    ("train", "lr", False, "expected a number"),
    ("run", "halving", 1, "expected true or false"),
    ("train", "steps", 2.5, "expected an integer"),
    ("train", "lr", "1e-3", "expected a number"),
    ("train", "lr", 10**400, "expected a number"),
])
def test_wrong_types_are_one_error_naming_the_key(section, key, value, expected):
    with pytest.raises(DseError, match=rf"\[{section}\] {key} has the wrong type: .*{expected}|\[{section}\] {key} {expected}"):
        study_from_dict(_with(section, key, value))


def test_integral_floats_are_integers_and_single_values_are_lists():
    cfg = study_from_dict({"space": {"budget": 2e5, "widths": 32, "heads": 4, "setups": "get"},
                           "train": {"steps": 1e3}, "data": {"patch_size": 2.0}})
    assert cfg.train.steps == 1000 and isinstance(cfg.train.steps, int) and cfg.patch_size == 2
    assert (cfg.space.widths, cfg.space.heads, cfg.space.setups) == ((32,), (4,), ("get",))
    assert parse_budget(cfg.space.budget) == 200_000


@pytest.mark.parametrize("budget", ["1e400", "inf", "nan", "-5M", 1e400, float("nan"), "0"])
def test_budgets_that_are_not_a_positive_finite_count_are_refused(budget):
    with pytest.raises(DseError, match="invalid budget"):
        study_from_dict({"space": {"budget": budget}})


@pytest.mark.parametrize("name", ["../x", "..", ".", "/abs/path", "a/b", "a b", "-x", "x" * 129, "a\\b", "é"])
def test_unsafe_study_names_are_refused_wherever_they_come_from(tmp_path, name):
    with pytest.raises(DseError, match="study name .* is not allowed"):
        study_from_dict({**BASE, "study": {"name": name}})
    with pytest.raises(DseError, match="study name .* is not allowed"):
        with_overrides(study_from_dict(BASE), study={"name": name})


def test_a_space_file_is_named_after_its_stem_only_when_that_is_a_safe_name(tmp_path):
    good = tmp_path / "my-space.toml"
    good.write_text('[space]\nbudget = "200k"\n')
    assert load_study(good).name == "my-space"
    bad = tmp_path / "my space.toml"
    bad.write_text('[space]\nbudget = "200k"\n')
    with pytest.raises(DseError, match="study name 'my space' is not allowed"):
        load_study(bad)
    named = tmp_path / "other space.toml"
    named.write_text('[study]\nname = "ok"\n[space]\nbudget = "200k"\n')
    assert load_study(named).name == "ok"


def test_data_set_and_device_names_are_checked_by_format():
    with pytest.raises(DseError, match="unknown data set 'mnist'; known: cifar10, digits, fashion-mnist"):
        study_from_dict({**BASE, "data": {"dataset": "mnist"}})
    for device in ("cudax", "gpu", "cuda:", ""):
        with pytest.raises(DseError, match="use auto, cpu, cuda or cuda:N"):
            study_from_dict(_with("run", "device", device))
    assert study_from_dict(_with("run", "device", "cuda:7")).run.device == "cuda:7"  # existence: resolve_device


@pytest.mark.parametrize("dataset, patch, fits", [("digits", 3, "1, 2, 4, 8"), ("digits", 0, "1, 2, 4, 8"),
                                                  ("fashion-mnist", 3, "1, 2, 4, 7, 14, 28"),
                                                  ("cifar10", 5, "1, 2, 4, 8, 16, 32")])
def test_a_patch_size_that_does_not_divide_the_image_names_the_ones_that_do(dataset, patch, fits):
    with pytest.raises(DseError, match=rf"patch_size {patch} does not divide the .* images of {dataset}; use one of {fits}$"):
        study_from_dict({**BASE, "data": {"dataset": dataset, "patch_size": patch}})
    with pytest.raises(DseError, match="patch_size"):
        dataset_geometry(dataset, patch)
    assert dataset_geometry(dataset, 1).patch_size == 1


def test_the_paper_widths_keep_the_rest_of_the_study():
    demo = load_study(ROOT / "search_spaces" / "demo.toml")
    paper = with_paper_widths(demo)
    assert (paper.space.widths, paper.space.heads, paper.space.depths) == ((), "rule", "closest")
    assert dataclasses.replace(paper, space=demo.space) == demo


def test_a_read_back_config_with_a_bad_value_is_refused():
    raw = study_from_dict(BASE).to_raw()
    raw["train"]["lr"] = math.nan
    with pytest.raises(DseError, match="train.lr must be a finite number"):
        study_from_dict(raw, source="study.json")


def test_the_budget_is_parsed_once_by_validation_and_kept_on_the_space(monkeypatch):
    import dse.config as config

    calls = []
    real = config.parse_budget
    monkeypatch.setattr(config, "parse_budget", lambda b: calls.append(b) or real(b))
    cfg = study_from_dict({"space": {"budget": "0.2M"}})
    assert calls == ["0.2M"] and cfg.space.budget_params == 200_000 and calls == ["0.2M"]
    assert "budget_params" not in cfg.to_json() and study_from_dict(cfg.to_raw()) == cfg  # not a key of the file


def test_a_run_study_is_named_after_the_space_and_the_budget_given():
    from dse.config import study_for_run

    assert study_for_run(None).name == "demo"
    assert study_for_run(None, space={"budget": "5e6"}).name == "demo-5M"
    assert study_for_run(None, name="mine", space={"budget": "5M"}).name == "mine"
    cfg = study_for_run(None, space={"budget": "5M"}, assignments=["study.name=set", "train.steps=7"])
    assert (cfg.name, cfg.train.steps, cfg.space.widths, cfg.space.depths) == ("set", 7, (), "closest")
    with pytest.raises(DseError, match="is not allowed"):
        study_for_run(None, name="../x")


# -- training seeds: [space] seeds, --seeds N ------------------------------------------------------------

def _seeded(seeds, **sections):
    raw = {"space": {"budget": "15.2k", "widths": [16], "heads": [2, 4], "min_depth": 2, "max_depth": 2,
                     "losses": ["l1", "l2"], **({"seeds": seeds} if seeds is not None else {})},
           "study": {"name": "seeded"}, "run": {"results_dir": "/tmp/dse-unused"}, **sections}
    return study_from_dict(raw)


def test_seeds_give_one_training_per_seed_with_the_name_kept():
    cfg = _seeded([0, 1, 2])
    got = [(name, t.loss, t.seed) for name, t in cfg.trainings()]
    assert got == [("get-l1", "l1", 0), ("get-l1", "l1", 1), ("get-l1", "l1", 2),
                   ("get-l2", "l2", 0), ("get-l2", "l2", 1), ("get-l2", "l2", 2)]
    assert [(n, t.seed) for n, t in _seeded(None, train={"seed": 7}).trainings()] == [("get-l1", 7), ("get-l2", 7)]
    assert [t.seed for _, t in _seeded([5, 3], train={"seed": 7}).trainings()] == [5, 3, 5, 3]  # seeds replace it
    assert _seeded([4, 9]).space.seeds == (4, 9) and study_from_dict(_seeded([4, 9]).to_raw()) == _seeded([4, 9])


def test_seeds_make_one_trial_per_seed_and_one_candidate_per_training():
    from dse.study import plan_study

    plan = plan_study(_seeded([0, 1, 2]))
    assert len(plan.specs) == len(plan.candidates) * 2 * 3
    assert len({s.trial_id for s in plan.specs}) == len(plan.specs)
    by_candidate: dict[str, set] = {}
    for s in plan.specs:
        by_candidate.setdefault(s.candidate_id, set()).add(s.train.seed)
    assert len(by_candidate) == len(plan.candidates) * 2 and all(v == {0, 1, 2} for v in by_candidate.values())
    # no seeds: the trials of train.seed, with the ids they had; seeds = [0] (train.seed 0) is the same study
    unseeded = plan_study(_seeded(None))
    assert [s.trial_id for s in unseeded.specs] == [s.trial_id for s in plan_study(_seeded([0])).specs]
    assert {s.trial_id for s in unseeded.specs} < {s.trial_id for s in plan.specs}


def test_variants_are_crossed_with_the_seeds():
    cfg = _seeded([0, 1], variants=[{"name": "short", "steps": 10}, {"name": "long", "steps": 20}])
    assert [(n, t.steps, t.seed) for n, t in cfg.trainings()] == [("short", 10, 0), ("short", 10, 1),
                                                                  ("long", 20, 0), ("long", 20, 1)]


@pytest.mark.parametrize("seeds, message", [
    ([0, 1, 0], "at most 32 distinct training seeds"),
    ([-1], "space.seeds must be >= 0"),
    (list(range(33)), "at most 32 distinct"),
    (["a"], "wrong type"),
    ([1.5], "wrong type"),
])
def test_bad_seeds_are_one_error_naming_the_key(seeds, message):
    with pytest.raises(DseError, match=message):
        _seeded(seeds)


def test_a_variant_with_its_own_seed_and_space_seeds_is_refused():
    with pytest.raises(DseError, match="variant 'mine' sets seed, but \\[space\\] seeds = \\[0, 1\\]"):
        _seeded([0, 1], variants=[{"name": "mine", "seed": 3}])
    cfg = _seeded(None, variants=[{"name": "mine", "seed": 3}])  # without space.seeds a variant's seed is its own
    assert [t.seed for _, t in cfg.trainings()] == [3]
    assert len(_seeded(list(range(32))).trainings()) == 64  # 32 seeds is allowed


def test_seeds_from_the_options_of_dse_run():
    from dse.config import study_for_run

    demo = study_for_run(None)  # the demo trains each candidate with seeds 0, 1 and 2
    assert demo.space.seeds == (0, 1, 2) and [t.seed for _, t in demo.trainings()] == [0, 1, 2]
    cfg = study_for_run(None, space={"seeds": [0, 1]})
    assert cfg.space.seeds == (0, 1) and [t.seed for _, t in cfg.trainings()] == [0, 1]
    assert study_for_run(None, space={"seeds": None}).space.seeds == (0, 1, 2)  # not given: the file's
