import random

import pytest

from dse.config import SpaceConfig
from dse.errors import DseError
from dse.sizing import count_params, default_widths, enumerate_candidates, parse_budget, propose, rule_heads
from dse.types import Geometry, StudentArch

CIFAR = Geometry(32, 3, 10)


@pytest.mark.parametrize(
    "text, expected",
    [("420k", 420_000), ("0.42M", 420_000), ("5M", 5_000_000), ("5e6", 5_000_000), (5_000_000, 5_000_000),
     ("2.2M", 2_200_000), ("420K", 420_000), ("1.5e3k", 1_500_000)],
)
def test_parse_budget_accepts_the_documented_forms(text, expected):
    assert parse_budget(text) == expected


@pytest.mark.parametrize("bad", ["5X", "", "M", "-5M", "0", "five", "5MM", "1e", True, float("nan"), float("inf"),
                                 "inf", "nan", "1e400", "1e400M", "0.1", -5, float("-inf")])
def test_parse_budget_rejects_anything_else(bad):
    with pytest.raises(DseError, match="invalid budget"):
        parse_budget(bad)


def test_parse_budget_takes_huge_integers_without_overflow():
    assert parse_budget(10**400) == 10**400  # no architecture will fit it, but that is enumerate's message


def test_count_params_equals_the_module_on_random_architectures():
    from dse.models.dit import DiT, count_module_params

    rng = random.Random(0)
    for _ in range(120):
        width = rng.choice([8, 12, 16, 24, 32, 48, 64, 96])
        heads = rng.choice([h for h in range(1, width + 1) if width % h == 0])
        geometry = Geometry(rng.choice([4, 8, 16, 32]), rng.choice([1, 3, 4]), rng.choice([1, 10, 100]),
                            patch_size=rng.choice([1, 2, 4]))
        arch = StudentArch(rng.randint(1, 4), width, heads, mlp_ratio=rng.choice([2.0, 4.0]))
        assert count_params(arch, geometry) == count_module_params(DiT(arch, geometry)), (arch, geometry)


def test_paper_table2_counts_fall_in_the_papers_0_42M_group():
    # Paper Table 2 (0.42M): its models have 413k-421k parameters.
    for d, w in [(1, 128), (2, 96), (5, 64), (9, 48), (21, 32)]:
        assert 413_000 <= count_params(StudentArch(d, w, 4), CIFAR) <= 421_100


@pytest.mark.parametrize(
    "budget, arch",
    [("0.42M", (5, 64, 8)), ("2.2M", (7, 128, 8)), ("5M", (7, 192, 12))],
)
def test_propose_gives_the_papers_proposals_for_cifar10(budget, arch):
    c = propose(budget, CIFAR)
    assert (c.arch.depth, c.arch.width, c.arch.heads) == arch
    assert 0.8 * parse_budget(budget) <= c.params <= 1.02 * parse_budget(budget)


def test_rule_heads_is_the_lower_median_of_the_divisors():
    assert rule_heads(64) == 8  # 1 2 4 [8] 16 32 64
    assert rule_heads(128) == 8  # 1 2 4 [8 16] 32 64 128
    assert rule_heads(192) == 12  # ... 8 [12 16] 24 ...
    assert rule_heads(48) == 6  # 1 2 3 4 [6 8] 12 16 24 48
    assert rule_heads(36) == 6  # 1 2 3 4 [6] 9 12 18 36


def test_enumerate_holds_exactly_the_band_and_divisor_heads():
    space = SpaceConfig(budget="0.42M")
    cands = enumerate_candidates(space, CIFAR)
    names = {(c.arch.depth, c.arch.width, c.arch.heads) for c in cands}
    for row in [(1, 128, 8), (2, 96, 8), (5, 64, 4), (5, 64, 8), (9, 48, 6), (21, 32, 4)]:  # paper Table 2
        assert row in names
    for c in cands:
        assert 0.8 * 420_000 <= c.params <= 1.02 * 420_000
        assert c.arch.width % c.arch.heads == 0
        assert c.arch.width in default_widths()
    # completeness: every (d, w) of the band is there, checked by brute force
    expected = {(d, w) for w in default_widths() for d in range(1, 65)
                if 336_000 <= count_params(StudentArch(d, w, 1), CIFAR) <= 428_400}
    assert {(c.arch.depth, c.arch.width) for c in cands} == expected


def test_enumerate_respects_listed_widths_heads_and_band():
    space = SpaceConfig(budget="0.42M", widths=(64, 96), heads=(4, 8, 12), lower=0.97, upper=1.01)
    cands = enumerate_candidates(space, CIFAR)  # 12 divides 96, not 64
    assert [(c.arch.depth, c.arch.width, c.arch.heads) for c in cands] == [
        (2, 96, 4), (2, 96, 8), (2, 96, 12), (5, 64, 4), (5, 64, 8)]


@pytest.mark.parametrize("widths, heads, named", [((32,), (5,), "heads 5 divides none of the widths 32"),
                                                  ((64,), (4, 8, 5), "heads 5 divides none of the widths 64"),
                                                  ((32, 48), (5, 7, 16), "heads 5, 7 divide none of the widths 32, 48")])
def test_heads_that_divide_no_width_are_named_not_reported_as_a_range(widths, heads, named):
    with pytest.raises(DseError) as err:
        enumerate_candidates(SpaceConfig(budget="200k", widths=widths, heads=heads), Geometry(8, 1, 10))
    assert named in str(err.value) and "heads must divide the width" in str(err.value)
    assert "no architecture fits" not in str(err.value)


def test_a_width_range_without_a_paper_width_is_a_clear_error():
    with pytest.raises(DseError, match="no width of the form 2\\^n or 3\\*2\\^n"):
        enumerate_candidates(SpaceConfig(budget="200k", min_width=65, max_width=95), CIFAR)


def test_group_heads_gives_one_row_per_depth_and_width():
    from dse.sizing import group_heads

    cands = enumerate_candidates(SpaceConfig(budget="0.42M", widths=(64, 96), heads=(4, 8, 12), lower=0.97, upper=1.01), CIFAR)
    assert group_heads(cands) == [
        {"depth": 2, "width": 96, "heads": [4, 8, 12], "params": 415_308},
        {"depth": 5, "width": 64, "heads": [4, 8], "params": 421_068},
    ]


def test_closest_depths_keep_one_depth_per_width_the_one_nearest_the_budget():
    every = enumerate_candidates(SpaceConfig(budget="0.42M", heads="rule"), CIFAR)
    closest = enumerate_candidates(SpaceConfig(budget="0.42M", heads="rule", depths="closest"), CIFAR)
    assert len({c.arch.width for c in every}) == len(closest) < len(every)
    for c in closest:
        same_width = [e.params for e in every if e.arch.width == c.arch.width]
        assert abs(c.params - 420_000) == min(abs(n - 420_000) for n in same_width)
    # the paper's Table 2 models at 0.42M are the closest depth of their widths
    assert {(1, 128), (2, 96), (5, 64), (9, 48), (21, 32)} <= {(c.arch.depth, c.arch.width) for c in closest}


def test_an_unknown_depths_choice_is_refused():
    from dse.config import study_from_dict

    with pytest.raises(DseError, match="depths must be one of 'all', 'closest'"):
        study_from_dict({"space": {"budget": "5M", "depths": "some"}})


def test_hard_cap_excludes_models_over_the_budget():
    cands = enumerate_candidates(SpaceConfig(budget="421000", upper=1.0), CIFAR)
    assert max(c.params for c in cands) <= 421_000
    assert (5, 64) not in {(c.arch.depth, c.arch.width) for c in cands}  # 421,068 params


def test_budget_outside_the_space_is_a_clear_error_with_the_range():
    smallest = count_params(StudentArch(1, 8, 1), CIFAR)
    largest = count_params(StudentArch(64, 1024, 1), CIFAR)
    for budget in ("1k", "1e12"):
        with pytest.raises(DseError, match="no architecture fits") as err:
            enumerate_candidates(SpaceConfig(budget=budget), CIFAR)
        assert f"{smallest:,} to {largest:,} parameters" in str(err.value)


def test_forward_flops_match_a_count_of_the_module_matmuls():
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from dse.models.dit import DiT
    from dse.sizing import forward_flops

    for arch, geometry in [(StudentArch(5, 64, 8), CIFAR), (StudentArch(2, 48, 6), Geometry(8, 1, 10))]:
        model = DiT(arch, geometry).eval()
        z = torch.randn(1, geometry.channels, geometry.image_size, geometry.image_size)
        with FlopCounterMode(display=False) as counter:
            model(z, torch.zeros(1, dtype=torch.int64))
        # torch's counter sees the linear and conv layers but not CPU's fused attention kernel, whose
        # two matmuls (q k^T and a v) are 2 x 2 T^2 w a block
        t = geometry.num_patches
        attention_core = arch.depth * 2 * 2 * t * t * arch.width
        counted = counter.get_total_flops() + attention_core
        assert abs(forward_flops(arch, geometry) - counted) / counted < 0.01


def test_the_candidate_table_marks_the_design_rule_of_the_spaces_own_mlp_ratio():
    from dse.sizing import candidate_table, design_rule

    for ratio in (4.0, 2.0):
        space = SpaceConfig(budget="0.42M", heads="rule", mlp_ratio=ratio)
        table = candidate_table(space, CIFAR)
        rule = design_rule(space, CIFAR)
        assert rule is not None and rule.arch.mlp_ratio == ratio
        assert [r for r in table.rows() if r["design_rule"]] == [{**rule.to_dict(), "design_rule": True}]
    assert design_rule(SpaceConfig(budget="1k"), CIFAR) is None
