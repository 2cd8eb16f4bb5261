"""Owns which trials may train together as one cohort (issue 14): several students of the same
architecture, stepped as one batched model in one process (`dse.distill.cohort.train_cohort`), one
store row per member. Light: no torch, so the executor plans cohorts before any trial starts.

Two trials are compatible when their steps can be batched without changing what either computes:
the same architecture, geometry, pairs, device and training schedule (every [train] key equal),
except the seed and the loss (with its LPIPS network and size), and the setup is GET (the one setup
whose step is a single forward pass of the student and a loss; MI1, TA and DMD train alone).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Sequence

# TrainConfig (dse.config) and TrialSpec (dse.trial) are named in annotations only: importing them,
# even under TYPE_CHECKING, would close an import cycle (dse.config imports this module).

COHORT_SETUPS = ("get",)  # setups whose students may share a cohort
# [train] keys in which the members of a cohort may differ (each member keeps its own)
MEMBER_KEYS = ("seed", "loss", "lpips_net", "lpips_size")
MAX_COHORT = 64  # run.cohort_size: members of one cohort, at most
DEFAULT_COHORT = 8  # run.cohort_size = 0 on GPUs: members of one cohort, at most (fewer when memory says so)


def train_key(train: TrainConfig) -> Hashable | None:
    """What two members' [train] configs must share (None: this config trains alone)."""
    if train.setup not in COHORT_SETUPS:
        return None
    return tuple(sorted((k, repr(v)) for k, v in dataclasses.asdict(train).items() if k not in MEMBER_KEYS))


def cohort_key(spec: TrialSpec) -> Hashable | None:
    """The key shared by every trial `spec` may train with (None: it trains alone)."""
    key = train_key(spec.train)
    if key is None:
        return None
    return (spec.arch, spec.geometry, spec.pairs_dir, spec.device, spec.threads, key)


def compatible(specs: Sequence[TrialSpec]) -> bool:
    """True when all `specs` may train as one cohort."""
    keys = {cohort_key(s) for s in specs}
    return len(keys) == 1 and None not in keys


def plan_cohorts(specs: Sequence[TrialSpec], max_size: int) -> list[list[TrialSpec]]:
    """The specs in cohorts of at most `max_size` compatible members, in the specs' order (a cohort
    starts where its first member stands); `max_size` <= 1 leaves every spec alone."""
    if max_size <= 1:
        return [[s] for s in specs]
    groups: dict[Hashable, list[list[TrialSpec]]] = {}
    out: list[list[TrialSpec]] = []
    for spec in specs:
        key = cohort_key(spec)
        if key is None:
            out.append([spec])
            continue
        open_groups = groups.setdefault(key, [])
        if open_groups and len(open_groups[-1]) < max_size:
            open_groups[-1].append(spec)
        else:
            group = [spec]
            open_groups.append(group)
            out.append(group)
    return out


def cohort_size_for(member_bytes: int, fixed_bytes: int, gpu_bytes: int, max_size: int, safety: float) -> int:
    """How many members of `member_bytes` each (beside `fixed_bytes` shared by the cohort: the CUDA
    context, the LPIPS network) fit on one GPU of `gpu_bytes` with `safety` headroom, from 1 to
    `max_size`; 1 without a GPU."""
    if gpu_bytes <= 0 or member_bytes <= 0:
        return 1
    fit = int((gpu_bytes / safety - fixed_bytes) // member_bytes)
    return max(1, min(max_size, fit))
