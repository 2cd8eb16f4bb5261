"""Owns the resources each trial asks Ray for: the shape of the cluster's nodes, the memory of a GPU,
and per trial a share of a GPU and the CPUs that go with it (`dse.search.trial_resources`), handed to
Tune as a plain resource dict.
"""

from __future__ import annotations

import os

import ray

import dse.search as dse_search
from dse.cohorts import DEFAULT_COHORT, cohort_size_for, plan_cohorts
from dse.errors import DseError
from dse.trial import TrialSpec


def node_shape() -> tuple[float, float]:
    """(CPUs, GPUs) of the node trials are sized for: the alive node with the most GPUs, else the
    one with the most CPUs."""
    shapes = [(n["Resources"].get("GPU", 0.0), n["Resources"].get("CPU", 0.0)) for n in ray.nodes() if n.get("Alive")]
    if not shapes:
        return float(os.cpu_count() or 1), 0.0
    gpus, cpus = max(shapes)
    return cpus, gpus


def gpu_memory_bytes() -> int:
    """Memory of one GPU: GPU 0 of this machine as torch sees it, else `search.DEFAULT_GPU_BYTES`
    (a driver without a GPU in front of a cluster with GPUs)."""
    try:
        import torch

        if torch.cuda.is_available():
            return int(torch.cuda.get_device_properties(0).total_memory)
    except Exception:  # noqa: BLE001 - no usable CUDA here: assume the common card
        pass
    return dse_search.DEFAULT_GPU_BYTES


def plan_resources(specs: list[TrialSpec], *, cpus_per_trial: float, gpus_per_trial: float,
                   node_cpus: float, node_gpus: float, gpu_bytes: int | None = None) -> dict[str, tuple[float, float]]:
    """trial_id -> (CPUs, GPUs) for each spec (see `search.trial_resources`)."""
    if gpus_per_trial > 1 and gpus_per_trial != int(gpus_per_trial):
        raise DseError(f"gpus_per_trial {gpus_per_trial}: above 1 it must be a whole number of GPUs "
                       "(fractions such as 0.25 pack several trials on one GPU)")
    if gpus_per_trial > 0 and node_gpus <= 0:
        raise DseError(f"gpus_per_trial {gpus_per_trial} but the Ray cluster has no GPU; use --gpus-per-trial 0 "
                       "(or -1 to choose automatically)")
    if gpus_per_trial > node_gpus > 0:
        raise DseError(f"gpus_per_trial {gpus_per_trial:g} but no Ray node has more than {node_gpus:g} GPUs; "
                       f"use --gpus-per-trial {node_gpus:g} or less")
    if gpu_bytes is None:
        gpu_bytes = gpu_memory_bytes() if node_gpus > 0 and gpus_per_trial < 0 else 0
    out = {}
    for spec in specs:
        need = dse_search.estimate_train_bytes(spec.arch, spec.geometry, spec.train) if gpus_per_trial < 0 else 0
        out[spec.trial_id] = dse_search.trial_resources(
            need, cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial, node_cpus=node_cpus,
            node_gpus=node_gpus, gpu_bytes=gpu_bytes)
    return out


def plan_cohort_resources(
    specs: list[TrialSpec], resources: dict[str, tuple[float, float]], *, cohort_size: int, gpus_per_trial: float,
    node_gpus: float, gpu_bytes: int | None = None,
) -> tuple[list[list[TrialSpec]], dict[str, tuple[float, float]]]:
    """The specs in cohorts (`dse.cohorts.plan_cohorts`) and each cohort's (CPUs, GPUs), keyed by its first
    member's trial id, from `resources` (trial_id -> (CPUs, GPUs) of each spec alone).

    Size and GPU share are chosen together from the memory estimate: `cohort_size` 0 means as many members
    as one GPU (or the fixed `gpus_per_trial` share of one) holds with `search.SAFETY` headroom, up to
    `DEFAULT_COHORT`, and 1 on a cluster without GPUs; N > 1 means at most N, as many as the memory allows
    on GPUs. With `gpus_per_trial = -1` a cohort's share is then chosen for the whole cohort's memory
    (`search.estimate_cohort_bytes`); a fixed share stays as it is."""
    if cohort_size == 1 or (cohort_size == 0 and node_gpus <= 0):
        return [[s] for s in specs], {s.trial_id: resources[s.trial_id] for s in specs}
    most = cohort_size or DEFAULT_COHORT
    if node_gpus > 0:
        if gpu_bytes is None:
            gpu_bytes = gpu_memory_bytes()
        room = gpu_bytes * (gpus_per_trial if 0 < gpus_per_trial < 1 else 1.0)
        member = max((dse_search.estimate_cohort_bytes([s]) - dse_search.CUDA_CONTEXT_BYTES for s in specs), default=0)
        most = cohort_size_for(member, dse_search.CUDA_CONTEXT_BYTES, int(room), most, dse_search.SAFETY)
    groups = plan_cohorts(specs, most)
    planned = {}
    for group in groups:
        cpus, gpus = resources[group[0].trial_id]
        if len(group) > 1 and gpus_per_trial < 0 and node_gpus > 0:
            gpus = dse_search.gpu_share(dse_search.estimate_cohort_bytes(group), gpu_bytes)
        planned[group[0].trial_id] = (cpus, gpus)
    return groups, planned


def resources_of(resources: dict[str, tuple[float, float]], config: dict) -> dict[str, float]:
    """The resource dict of the trial `config` names, from `resources` (trial_id -> (CPUs, GPUs)), as
    `tune.with_resources` takes it (a function of the trial's config returning a dict; Tune turns it
    into a one-bundle placement group)."""
    cpus, gpus = resources[config["trial_id"]]
    bundle = {"CPU": cpus}
    if gpus > 0:
        bundle["GPU"] = gpus
    return bundle
