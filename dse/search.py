"""Owns the orchestration decisions that need no Ray: how much of a GPU (and how many CPUs) a trial
gets, how a sampler's choices map onto the candidates, and which trials successive halving stops on
the non-dominated rank of their partial results.

Pure Python (no torch, no ray): `dse.executor` turns these decisions into Ray Tune resources and a
Tune scheduler, and the tests check them on hand-made numbers.

GPU share (`estimate_train_bytes`, `gpu_share`): a trial's peak training memory is estimated as

    bytes = 20 * P                                   # fp32 weights, grads, AdamW m and v, EMA copy (4 B each)
          + ACTIVATION_BYTES * B * T * w * d         # what backward keeps, per block
          + extras (TA / DMD fake score / LPIPS)     # the setup's and the loss's own networks
          + CUDA_CONTEXT_BYTES                       # each trial is a process with its own CUDA context

for P parameters, batch B, T tokens (patches), width w and depth d. ACTIVATION_BYTES = 48 bytes per
token, per unit of width, per block: Korthikanti et al. 2022 ("Reducing activation recomputation")
count 34 for a transformer block in half precision; the DiT block's adaLN modulation, gates and the
fp32 residual stream under bf16 autocast add about 14. Attention scores are not counted: the student
uses `scaled_dot_product_attention`, whose fused CUDA kernels keep no (T, T) matrix. The share is the
smallest of 1/8, 1/4, 1/2, 1 whose slice of the GPU's memory holds SAFETY (1.5) times the estimate.

Search space (`CandidateTree`): the optuna driver samples a candidate as a path of categorical
choices, training -> width -> depth -> heads, rather than one categorical over trial ids, so the
sampler can learn which widths or trainings do well and carry that to candidates it has not tried (a
categorical over ids teaches it nothing about the others). A choice whose options depend on earlier
ones is named after the fewest earlier choices that determine its options (depth within a budget
depends on the width: "depth|width=64"), so every path is exactly one candidate and every candidate
one path.

Successive halving (`rung_steps`, `halving_keeps`, `SuccessiveHalving`): rungs at
total/eta^(k-1), ..., total/eta training steps for k = `rungs` (the k-th rung, the full run, is where
a trial completes and its FID decides). When a trial first reports at or past a rung, it is recorded
there with its size, its latency (measured before training, so known at every rung) and its loss, and
ranked by non-dominated sorting over (params, latency, loss) among every trial recorded at that rung
with the same training (setup, loss function, length: losses of different kinds are not comparable).
It goes on when it is on the front (rank 0: it is never stopped while nobody beats it in size, speed
and loss at once) or among the best ceil(n / eta) of the n recorded by (rank, loss, params, latency,
order of arrival); otherwise it is stopped. Latency counts only when every trial ranked at the rung has
a usable one (`usable_latency`: measured, finite and not contended); if one lacks it, that rung ranks all
of them over (params, loss), as before latency was known, so a missing latency neither makes a trial
immune (a missing objective takes no part in the sort) nor gets it stopped for a speed it was never
measured at. Trials that arrive later are compared to those recorded before them, as in asynchronous
successive halving (Li et al. 2020, ASHA), so nobody waits.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import TYPE_CHECKING

from dse.config import TrainConfig
from dse.pareto import non_dominated_sort
from dse.sizing import count_params
from dse.types import Geometry, StudentArch

if TYPE_CHECKING:
    from dse.trial import TrialSpec

# ---------------------------------------------------------------------------------------------
# Resources: GPU share from the estimated peak training memory
# ---------------------------------------------------------------------------------------------

STATE_BYTES_PER_PARAM = 20  # fp32 weights 4 + grads 4 + AdamW exp_avg 4 + exp_avg_sq 4 + EMA copy 4
ACTIVATION_BYTES = 48  # per token, per unit of width, per block (see the module docstring)
LPIPS_BYTES_PER_PIXEL = {"alex": 256, "vgg": 3072}  # kept for backward per pixel of the resized image
CUDA_CONTEXT_BYTES = 512 * 2**20  # CUDA context, cuBLAS / cuDNN workspaces of one trial process
MEMBER_COPY_BYTES_PER_PARAM = 8  # a cohort member's own weights and EMA (4 + 4), kept for its checkpoint
DEFAULT_GPU_BYTES = 80 * 10**9  # when no GPU can be asked (a driver without one): an 80 GB card
SHARES = (0.125, 0.25, 0.5, 1.0)  # the GPU fractions a trial can get
SAFETY = 1.5  # the share must hold this many times the estimate


def _dit_train_bytes(arch: StudentArch, geometry: Geometry, batch_size: int, *, trained: bool = True) -> int:
    """Training state (or the weights only, for a frozen network) plus the activations backward keeps."""
    params = count_params(arch, geometry)
    state = (STATE_BYTES_PER_PARAM if trained else 4) * params
    # (B, T, w) per block: what the backward pass keeps
    activations = ACTIVATION_BYTES * batch_size * geometry.num_patches * arch.width * arch.depth
    return state + activations


def estimate_train_bytes(arch: StudentArch, geometry: Geometry, train: TrainConfig) -> int:
    """Peak GPU memory (bytes) of training `arch` with `train`, by the formula of the module docstring."""
    b = train.batch_size
    total = _dit_train_bytes(arch, geometry, b) + CUDA_CONTEXT_BYTES
    if train.setup == "ta":  # the teaching assistant: trained first (GET), then run forward beside the student
        total += _dit_train_bytes(StudentArch(train.ta_depth, train.ta_width, train.ta_heads), geometry, b)
    elif train.setup == "dmd":  # the fake score DiT, trained alongside the student
        total += _dit_train_bytes(StudentArch(train.dmd_fake_depth, train.dmd_fake_width, train.dmd_fake_heads),
                                  geometry, b)
    if train.loss == "lpips" or (train.setup == "ta" and train.ta_lambda2 > 0 and train.ta_feature_loss == "lpips"):
        side = train.lpips_size or geometry.image_size
        total += LPIPS_BYTES_PER_PIXEL.get(train.lpips_net, LPIPS_BYTES_PER_PIXEL["vgg"]) * b * side * side
    return int(total)


def estimate_cohort_bytes(specs: Sequence[TrialSpec]) -> int:
    """Peak GPU memory (bytes) of training `specs` as one cohort in one process: one CUDA context, and each
    member's weights, optimizer state and activations (`estimate_train_bytes` without its context) plus
    the copy of its weights and EMA it keeps for its own checkpoint (dse.distill.cohort)."""
    return CUDA_CONTEXT_BYTES + sum(estimate_train_bytes(s.arch, s.geometry, s.train) - CUDA_CONTEXT_BYTES
                                    + MEMBER_COPY_BYTES_PER_PARAM * count_params(s.arch, s.geometry) for s in specs)


def gpu_share(train_bytes: int, gpu_bytes: int, safety: float = SAFETY) -> float:
    """The smallest of `SHARES` whose slice of a `gpu_bytes` GPU holds `safety * train_bytes`; a whole
    GPU when none does (a trial gets at most one); 0 when there is no GPU (`gpu_bytes <= 0`)."""
    if gpu_bytes <= 0:
        return 0.0
    for share in SHARES:
        if share * gpu_bytes >= safety * train_bytes:
            return share
    return 1.0


def trial_resources(
    train_bytes: int, *, cpus_per_trial: float, gpus_per_trial: float, node_cpus: float, node_gpus: float,
    gpu_bytes: int,
) -> tuple[float, float]:
    """(CPUs, GPUs) of one trial on a node of `node_cpus` CPUs and `node_gpus` GPUs of `gpu_bytes` each.

    `gpus_per_trial = -1` chooses the GPU share from `train_bytes` (0 without GPUs); `cpus_per_trial = 0`
    gives a trial the CPUs that go with its GPU share (node_cpus * share / node_gpus, at least 1), or
    every CPU of the node when it gets no GPU (then trials run one at a time on that node).
    """
    if gpus_per_trial < 0:
        gpus = gpu_share(train_bytes, gpu_bytes) if node_gpus > 0 else 0.0
    else:
        gpus = float(gpus_per_trial)
    if cpus_per_trial > 0:
        cpus = float(cpus_per_trial)
    elif gpus > 0 and node_gpus > 0:
        cpus = float(max(1, min(node_cpus, math.floor(node_cpus * gpus / node_gpus))))
    else:
        cpus = float(max(1, node_cpus))
    return cpus, gpus


# ---------------------------------------------------------------------------------------------
# The candidates as a tree of categorical choices
# ---------------------------------------------------------------------------------------------

SEARCH_LEVELS = ("training", "width", "depth", "heads")
Choose = Callable[[str, list], Hashable]  # (parameter name, its options) -> the option taken


class CandidateTree:
    """Candidates (trial_id -> one value per level, e.g. (training, width, depth, heads)) as a path of
    named categorical choices. A level with a single value everywhere is left out; when several
    candidates share all levels, a last choice "trial|..." among their ids tells them apart."""

    def __init__(self, keys: dict[str, Sequence[Hashable]], levels: Sequence[str] = SEARCH_LEVELS):
        self.keys = {tid: tuple(k) for tid, k in keys.items()}
        if any(len(k) != len(levels) for k in self.keys.values()):
            raise ValueError("every candidate needs one value per level")
        self.levels = [i for i in range(len(levels)) if len({k[i] for k in self.keys.values()}) > 1]
        self.names = list(levels)
        self.qualifiers = {i: self._qualifier(i) for i in self.levels}

    def _options(self, prefix: dict[int, Hashable], level: int) -> list:
        return sorted({k[level] for k in self.keys.values() if all(k[j] == v for j, v in prefix.items())})

    def _qualifier(self, level: int) -> tuple[int, ...]:
        """The fewest earlier levels whose values determine the options at `level`."""
        earlier = [j for j in self.levels if j < level]
        paths = {tuple(k[j] for j in earlier) for k in self.keys.values()}  # the earlier choices that occur
        options = {p: self._options(dict(zip(earlier, p)), level) for p in paths}
        for size in range(len(earlier) + 1):
            for subset in combinations(range(len(earlier)), size):
                by_subset: dict[tuple, list] = {}
                if all(by_subset.setdefault(tuple(p[i] for i in subset), o) == o for p, o in options.items()):
                    return tuple(earlier[i] for i in subset)
        return tuple(earlier)

    def _name(self, level: int, prefix: dict[int, Hashable]) -> str:
        q = self.qualifiers[level]
        if not q:
            return self.names[level]
        return self.names[level] + "|" + ",".join(f"{self.names[j]}={prefix[j]}" for j in q)

    def walk(self, choose: Choose) -> str:
        """The trial_id reached by taking `choose(name, options)` at each level."""
        prefix: dict[int, Hashable] = {}
        for level in self.levels:
            name = self._name(level, prefix)
            prefix[level] = choose(name, self._options(prefix, level))
        ids = sorted(t for t, k in self.keys.items() if all(k[j] == v for j, v in prefix.items()))
        if len(ids) == 1:
            return ids[0]
        return choose(self._tail_name(prefix), ids)

    def _tail_name(self, prefix: dict[int, Hashable]) -> str:
        return "trial|" + ",".join(f"{self.names[j]}={v}" for j, v in prefix.items())

    def path(self, trial_id: str) -> dict[str, tuple[Hashable, list]]:
        """name -> (value, options) of the choices that lead to `trial_id`."""
        key, out, prefix = self.keys[trial_id], {}, {}
        for level in self.levels:
            out[self._name(level, prefix)] = (key[level], self._options(prefix, level))
            prefix[level] = key[level]
        ids = sorted(t for t, k in self.keys.items() if k == key)
        if len(ids) > 1:
            out[self._tail_name(prefix)] = (trial_id, ids)
        return out


# ---------------------------------------------------------------------------------------------
# Successive halving on the non-dominated rank of partial results
# ---------------------------------------------------------------------------------------------


def rung_steps(total_steps: int, rungs: int, eta: int) -> list[int]:
    """The training steps where halving decides: round(total / eta^j) for j = rungs-1, ..., 1, increasing,
    without duplicates and below `total_steps` (the full run is the last rung, where the trial completes).

    >>> rung_steps(900, 3, 3)
    [100, 300]
    """
    steps = []
    for j in range(rungs - 1, 0, -1):
        s = max(1, round(total_steps / eta**j))
        if s < total_steps and s not in steps:
            steps.append(s)
    return steps


def usable_latency(row: Mapping) -> float | None:
    """A row's (or a spec's `latency_row`'s) `latency_s` when it can be ranked on: a finite number from a
    measurement that was not contended (`latency_contended` not true); else None, as if it were missing
    (a contended figure may be many times the real one, so it is never ranked)."""
    value, contended = row.get("latency_s"), row.get("latency_contended")
    try:
        if contended is not None and contended == contended and bool(contended):  # NaN / None: not known
            return None
    except TypeError:  # pandas' NA: not known to be contended
        pass
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


HALVING_OBJECTIVES = ("params", "latency", "loss")  # what a rung ranks on, all minimised
HALVING_FALLBACK = ("params", "loss")  # ... when a trial ranked there has no usable latency


@dataclass(frozen=True)
class Partial:
    """A trial's partial result recorded at a rung: its size, its latency (seconds, measured before
    training; None when not usable) and its training loss there."""

    trial_id: str
    params: float
    loss: float
    latency: float | None = None


def _present(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))


def halving_objectives(records: Sequence[Partial]) -> tuple[str, ...]:
    """What the rung ranks `records` on: (params, latency, loss) when every record that takes part in the
    ranking (size and loss present) has a usable latency, else (params, loss) for all of them."""
    ranked = [r for r in records if _present(r.params) and _present(r.loss)]
    return HALVING_OBJECTIVES if all(_present(r.latency) for r in ranked) else HALVING_FALLBACK


def halving_keeps(records: list[Partial], eta: int) -> dict[str, tuple[bool, int]]:
    """For trials recorded at one rung: trial_id -> (goes on, non-dominated rank over `halving_objectives`:
    (params, latency, loss), or (params, loss) when one of them has no usable latency).

    The front (rank 0) goes on, and so do the best ceil(n / eta) of the n by (rank, loss, params, latency,
    order of arrival); the others are stopped. A record with a missing or NaN size or loss is never stopped.
    """
    objectives = halving_objectives(records)
    ranks = non_dominated_sort([tuple(getattr(r, k) for k in objectives) for r in records])
    quota = math.ceil(len(records) / eta)
    with_latency = "latency" in objectives
    ranked = sorted((i for i, rank in enumerate(ranks) if rank is not None),
                    key=lambda i: (ranks[i], records[i].loss, records[i].params,
                                   records[i].latency if with_latency else 0.0, i))
    best = set(ranked[:quota])
    out = {}
    for i, r in enumerate(records):
        rank = ranks[i]
        out[r.trial_id] = (rank is None or rank == 0 or i in best, -1 if rank is None else rank)
    return out


@dataclass(frozen=True)
class Stop:
    """Successive halving's decision to stop a trial."""

    trial_id: str
    step: int  # the step of the report that reached the rung
    loss: float
    rung: int  # 1-based: rung 1 is the earliest
    rung_step: int
    rank: int  # non-dominated rank over `objectives` among the trials recorded at the rung
    recorded: int  # how many trials were recorded at the rung (this one included)
    objectives: tuple[str, ...] = HALVING_OBJECTIVES  # what the rung ranked on (`halving_objectives`)

    @property
    def reason(self) -> str:
        return (f"stopped at step {self.step} by successive halving (rank {self.rank} over "
                f"({', '.join(self.objectives)}) at rung {self.rung}, step {self.rung_step}, among {self.recorded})")


@dataclass
class SuccessiveHalving:
    """Asynchronous successive halving on the non-dominated rank of (params, latency, loss) at each rung
    ((params, loss) at a rung where a trial has no usable latency: `halving_objectives`).

    Feed it every training report with `observe`; it answers a `Stop` when the trial must stop, else
    None. Trials are compared only within their `group` (same setup, loss function and run length).
    """

    rungs: int = 3
    eta: int = 3
    # (group, rung index) -> the partial results recorded there, in order of arrival
    recorded: dict[tuple[str, int], list[Partial]] = field(default_factory=dict)
    passed: dict[str, int] = field(default_factory=dict)  # trial_id -> rungs it has passed
    stopped: dict[str, Stop] = field(default_factory=dict)

    def observe(self, trial_id: str, group: str, *, params: float, step: int, total_steps: int,
                loss: float, latency: float | None = None) -> Stop | None:
        """Record a training report; a `Stop` if the trial reached a rung where it is dominated. `latency`:
        the trial's usable latency in seconds (measured before training), None when it has none."""
        latency = float(latency) if _present(latency) else None
        if trial_id in self.stopped:
            return self.stopped[trial_id]
        rungs = rung_steps(total_steps, self.rungs, self.eta)
        done = self.passed.get(trial_id, 0)
        while done < len(rungs) and step >= rungs[done]:  # one report can pass several rungs
            here = self.recorded.setdefault((group, done), [])
            here.append(Partial(trial_id, params, loss, latency))
            done += 1
            self.passed[trial_id] = done
            goes_on, rank = halving_keeps(here, self.eta)[trial_id]
            if not goes_on:
                stop = Stop(trial_id, step, loss, done, rungs[done - 1], rank, len(here), halving_objectives(here))
                self.stopped[trial_id] = stop
                return stop
        return None
