"""Owns a study end to end: resolve the candidates of a space, make sure the teacher pairs exist,
run the trials that are not yet complete through the executor, and write the Pareto report.

Everything a user can get wrong (space file, budget, band, study name, device, folders, teacher
pairs, data set, cluster) is checked before anything is written (`preflight`), which plans the
study once: `run_study` runs that plan. A study is the folder
`<results_dir>/<name>` (dse.layout): reading one back takes its name and folders from where it is,
never from what its study.json says.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from dse.config import StudyConfig, dataset_geometry, format_count, parse_address, study_from_dict
from dse.convergence import study_warnings
from dse.errors import DseError, one_line
from dse.events import COMPLETE, FAILED, LATENCY, OUTSIDE, STATUSES, STOPPED, OnEvent
from dse.fileio import atomic_write, check_folder
from dse.layout import ARTIFACTS_DIR, LAST_CHECKPOINT, SAMPLES_FILE, StudyLayout, check_name, study_names
from dse.pareto import FRONT, TIED, noise_aware_front
from dse.search import usable_latency
from dse.sizing import Candidate, design_rule, enumerate_candidates
from dse.stats import group_points
from dse.store import ResultsStore, is_null
from dse.trackers import check_trackers, open_trackers
from dse.trial import TrialSpec
from dse.types import Geometry, StudentArch


@dataclass(frozen=True)
class StudyPlan:
    """What a study will run, computed without side effects; `checked` when `preflight` made it."""

    config: StudyConfig
    geometry: Geometry
    candidates: list[Candidate]
    proposal: Candidate | None
    specs: list[TrialSpec]
    checked: bool = False

    @property
    def layout(self) -> StudyLayout:
        r = self.config.run
        return StudyLayout(Path(r.results_dir), self.config.name, Path(r.reports_dir))

    @property
    def study_dir(self) -> Path:
        return self.layout.study_dir

    @property
    def store(self) -> ResultsStore:
        return ResultsStore(self.layout.trials_dir, self.layout.claims_dir)

    @property
    def report_path(self) -> Path:
        return self.layout.report_path

    def to_run(self) -> list[TrialSpec]:
        """The specs a run of the study trains now (`trials_to_run` over the rows in its store)."""
        return trials_to_run(self.specs, self.store.statuses(), self.config.run.retry_failed)


@dataclass(frozen=True)
class StudyOutcome:
    plan: StudyPlan
    report_path: Path
    num_complete: int
    num_failed: int
    skipped: int  # not run: their row says complete, stopped, or failed (without retry_failed)
    # the points (candidates over their seeds) on the noise-aware front (front or tied), by params:
    # candidate_id, trial_id (its first), depth, width, heads, params, n, fid, fid_low, fid_high,
    # latency_s, front_status, tied_with (dse.pareto.noise_aware_front)
    front: list[dict]
    elsewhere: int = 0  # not run: another live process holds their claim
    num_stopped: int = 0
    warnings: list[str] = dataclasses.field(default_factory=list)  # dse.convergence.study_warnings, latency_warnings
    latency: list[ArchLatency] = dataclasses.field(default_factory=list)  # the latency pass, per architecture
    outside: int = 0  # trials not run: their candidate is outside the constraints (max_params, max_latency)


@dataclass(frozen=True)
class ArchLatency:
    """One architecture of a study's latency pass (`latency_pass`): its row columns from the measurement
    (`columns`, empty when it was not measured or the measurement failed), whether it is inside the
    study's constraints (and why not), and the error of a failed measurement."""

    arch: StudentArch
    params: int
    columns: dict
    inside: bool = True
    reason: str = ""  # why it is outside the constraints
    error: str = ""  # the measurement failed: its trials fail without training
    cache_entry: dict | None = dataclasses.field(default=None, repr=False, compare=False)  # to write (deferred)

    @property
    def usable(self) -> bool:
        """A latency the study may rank on and check constraints with: measured, and not contended."""
        value = usable_latency(self.columns)
        return value is not None and value > 0

    def to_dict(self) -> dict:
        return {"depth": self.arch.depth, "width": self.arch.width, "heads": self.arch.heads,
                "mlp_ratio": self.arch.mlp_ratio, "name": self.arch.name, "params": self.params,
                "inside": self.inside, "reason": self.reason, "error": self.error, **self.columns}


def geometry_of(cfg: StudyConfig) -> Geometry:
    """The study's image geometry; a DseError naming the patch sizes that work when patch_size does
    not divide the image."""
    return dataset_geometry(cfg.dataset, cfg.patch_size)


def plan_study(cfg: StudyConfig) -> StudyPlan:
    """Candidates x trainings (the variants, or setups x losses) as trial specs; raises DseError if none fit."""
    geometry = geometry_of(cfg)
    candidates = enumerate_candidates(cfg.space, geometry)
    proposal = design_rule(cfg.space, geometry)
    budget = cfg.space.budget_params
    layout = StudyLayout(Path(cfg.run.results_dir), cfg.name, Path(cfg.run.reports_dir))  # refuses an unsafe name
    specs = []
    for cand in candidates:
        for variant, train in cfg.trainings():
            spec = TrialSpec(
                study=cfg.name, dataset=cfg.dataset, geometry=geometry, arch=cand.arch, train=train,
                eval=cfg.eval, pairs_dir=str(cfg.pairs_dir().resolve()), budget=budget,
                proposed=proposal is not None and cand.arch == proposal.arch, device=cfg.run.device,
                variant=variant, data_root=cfg.data_root, defer_latency=True,
            )
            artifacts = layout.artifacts_dir(spec.trial_id).resolve()
            specs.append(dataclasses.replace(spec, artifacts_dir=str(artifacts)))
    return StudyPlan(cfg, geometry, candidates, proposal, specs)


def ensure_pairs(cfg: StudyConfig, progress: Callable[[int, int, float], None] | None = None) -> Path:
    """Generate the study's teacher pairs unless the store already holds enough of them; with
    teacher.kind = "store", only check that the given store opens."""
    from dse.data.pairs import PairStore
    from dse.teacher.generate import generate_pairs
    from dse.teacher.edm import SamplerSettings

    t = cfg.teacher
    if t.kind == "store":
        PairStore.open(cfg.pairs_dir())
        return cfg.pairs_dir()
    return generate_pairs(
        cfg.pairs_dir(), dataset=cfg.dataset, teacher=t.kind, source=t.source, data_root=cfg.data_root,
        num_pairs=t.num_pairs, seed=t.seed, settings=SamplerSettings(t.num_steps, t.sigma_min, t.sigma_max, t.rho),
        shard_size=t.shard_size, image_dtype=t.image_dtype, progress=progress,
    )


def preflight(cfg: StudyConfig) -> StudyPlan:
    """The plan of the study, after checking without writing anything what `run_study` could
    otherwise only find out after it has written: the plan itself (name, candidates), the device,
    the results, study and reports folders (folders, writable), the teacher pairs (a given store
    opens and verifies; for pairs still to be made, the folder can be made and the data set loads)
    and the data set split FID is measured against. A DseError names what is wrong. The cluster is
    checked by `run_study` (it connects), only when there are trials to run."""
    from dse.data.datasets import load_dataset
    from dse.data.pairs import PairStore
    from dse.device import resolve_device

    plan = plan_study(cfg)
    r = cfg.run
    address = r.address or os.environ.get("RAY_ADDRESS", "")
    if address:  # a malformed or unreachable address is refused within seconds, before anything else
        parse_address(address)
        from dse.executor import check_reachable  # imports ray: only for a cluster

        check_reachable(address)
    resolve_device(r.device)  # the latency pass runs in this process, on this device
    check_trackers(r.log_to)  # --log-to wandb without its package
    check_folder(r.results_dir, "results folder")
    check_folder(plan.study_dir, "study folder")
    check_folder(r.reports_dir, "reports folder")
    splits = set()
    if cfg.teacher.kind != "store":
        check_folder(cfg.pairs_dir(), "pair store")
        if cfg.teacher.kind == "empirical":
            splits.add("train")  # what the empirical teacher denoises towards
        if cfg.teacher.kind == "diffusers":  # its folder and geometry, from its JSON files (no weights loaded)
            from dse.teacher.registry import teacher_entry

            teacher_entry(cfg.teacher.kind, cfg.dataset, cfg.teacher.source)
    if not address:  # on a cluster, the trials measure FID on its nodes, with their data
        splits.add(cfg.eval.reference)
    for split in sorted(splits):
        load_dataset(cfg.dataset, cfg.data_root or None, split=split)
    if cfg.teacher.kind == "store":  # last: opening verifies it, and remembers the checksums inside it
        PairStore.open(cfg.pairs_dir())
    return dataclasses.replace(plan, checked=True)


def trials_to_run(specs: list[TrialSpec], statuses: dict[str, str], retry_failed: bool = False) -> list[TrialSpec]:
    """The specs a run of the study trains: those with no row, and with `retry_failed` also those
    whose row says failed or stopped. Complete ones never run again; an interrupted one (no row)
    runs again and resumes from its checkpoint `artifacts/<trial>/last.pt`."""
    again = (FAILED, STOPPED) if retry_failed else ()
    return [s for s in specs if s.trial_id not in statuses or statuses[s.trial_id] in again]


def run_study(
    study: StudyConfig | StudyPlan, *, on_event: OnEvent | None = None,
    on_pairs: Callable[[int, int, float], None] | None = None,
    on_latency: Callable[[int, int, ArchLatency], None] | None = None,
) -> StudyOutcome:
    """Measure the latency of every candidate first (`latency_pass`: cached, on fresh weights, the device
    to itself), leave out the candidates outside the constraints, then run every trial of the study
    that is not done in its store (see `trials_to_run`) and that no other live process has claimed,
    and write the report. `study` is a config (planned and checked here, `preflight`) or the plan
    `preflight` returned for it (run as it is: not planned or checked again). `on_latency(i, n, arch)`
    hears of each architecture measured (or read from the cache). The experiment trackers of `run.log_to`
    (dse.trackers) hear every event, with or without `on_event`; their warnings join the outcome's."""
    plan = study if isinstance(study, StudyPlan) and study.checked else preflight(
        study.config if isinstance(study, StudyPlan) else study)
    with open_trackers(plan.config.run.log_to, plan.layout, plan.store) as trackers:
        outcome = _run_plan(plan, trackers.wrap(on_event), on_pairs, on_latency)
    return dataclasses.replace(outcome, warnings=[*outcome.warnings, *trackers.warnings])


def _run_plan(plan: StudyPlan, on_event: OnEvent | None, on_pairs: Callable[[int, int, float], None] | None,
              on_latency: Callable[[int, int, ArchLatency], None] | None) -> StudyOutcome:
    """`run_study` of a checked plan."""
    from dse.executor import prepare_cluster, run_trials

    cfg = plan.config
    store, retry, r = plan.store, cfg.run.retry_failed, cfg.run
    # before training, and before Ray starts (its start-up keeps the CPUs busy); writes nothing yet
    latency = latency_pass(plan, on_latency, defer_cache=True)
    resources = None
    maybe = trials_to_run(plan.specs, store.statuses(), retry)  # before the constraints leave some out
    if maybe:  # connects to Ray (a short timeout for an address) and checks the request against its nodes
        resources = prepare_cluster(maybe, cpus_per_trial=r.cpus_per_trial, gpus_per_trial=r.gpus_per_trial,
                                    address=r.address)
    commit_latency_cache(plan, latency)  # the study is accepted: its new measurements join the cache
    by_arch = {a.arch: a for a in latency}
    specs = [dataclasses.replace(s, latency=tuple(sorted(by_arch[s.arch].columns.items()))) for s in plan.specs]
    outside = [s for s in specs if not by_arch[s.arch].inside]
    inside = [s for s in specs if by_arch[s.arch].inside]
    todo = trials_to_run(inside, store.statuses(), retry)
    unmeasured = [s for s in todo if by_arch[s.arch].error]  # their latency failed: they fail untrained
    todo = [s for s in todo if not by_arch[s.arch].error]
    atomic_write(plan.layout.study_file, cfg.to_json())
    write_latency_file(plan, latency)
    for spec in outside:
        if on_event:
            on_event(spec.trial_id, OUTSIDE, {"reason": by_arch[spec.arch].reason, **by_arch[spec.arch].columns})
    for spec in unmeasured:
        _store_failed(store, spec, f"latency: {by_arch[spec.arch].error}", on_event)
    if todo:
        ensure_pairs(cfg, on_pairs)
    with store.claim([s.trial_id for s in todo]) as claims:
        # a trial another process finished between the read above and our claim is not run again
        mine = [s for s in todo if s.trial_id in claims]
        mine = trials_to_run(mine, store.statuses(s.trial_id for s in mine), retry)
        claims.release(set(claims.got) - {s.trial_id for s in mine})
        mine_ids = {m.trial_id for m in mine}
        run_trials(
            mine, store.root, storage_dir=plan.study_dir, cpus_per_trial=r.cpus_per_trial,
            gpus_per_trial=r.gpus_per_trial, address=r.address, on_event=_releasing(claims, on_event),
            search=r.search, num_samples=r.num_samples, halving=r.halving, halving_rungs=r.halving_rungs,
            halving_eta=r.halving_eta, seed=cfg.train.seed,
            context=[s for s in inside if s.trial_id not in mine_ids], resources=resources,
            cohort_size=r.cohort_size,
        )
    fill_latency(plan, latency)
    if cfg.eval.latency_recheck:
        measure_latency_pass(plan, on_event)
    return _finish(plan, skipped=len(inside) - len(mine) - len(claims.busy) - len(unmeasured),
                   elsewhere=len(claims.busy), latency=latency, outside=len(outside))


def _store_failed(store: ResultsStore, spec: TrialSpec, error: str, on_event: OnEvent | None) -> None:
    """Write the row of a trial that fails before it trains (its latency could not be measured)."""
    from dse.trial import base_row, _now

    row = {**base_row(spec), "status": FAILED, "error": error, "finished_at": _now()}
    store.write(row)
    if on_event:
        on_event(spec.trial_id, FAILED, row)


def latency_pass(plan: StudyPlan, on_latency: Callable[[int, int, ArchLatency], None] | None = None, *,
                 defer_cache: bool = False) -> list[ArchLatency]:
    """Each candidate architecture of the plan with its latency, measured before any training on freshly
    initialised weights (the time does not depend on the weights: bench/latency_weights.py) by the
    study's protocol and runtime (`dse.metrics.runtimes`), one at a time in this process, or read from
    the latency cache (`dse.latency_cache`) when this device measured it before; then checked against
    the constraints `space.max_params` (before measuring: a candidate above it is not measured) and
    `space.max_latency` (per image). A contended measurement (re-measured, still contended) is not
    cached, and cannot put a candidate outside (its figure is not trusted). A failed measurement (a
    `command` that fails) is recorded as `error`; when every measurement fails, a DseError says why
    before anything is written. With `defer_cache` the new measurements are kept in each result's
    `cache_entry` and written by `commit_latency_cache` (a study writes nothing before it is accepted)."""
    import json as _json
    import tempfile
    from datetime import datetime, timezone

    import torch

    from dse.device import resolve_device
    from dse.latency_cache import LatencyCache, cache_key
    from dse.metrics.runtimes import fingerprint, measure, protocol_of
    from dse.models.dit import DiT

    cfg = plan.config
    space = cfg.space
    device = resolve_device(cfg.run.device)
    protocol = protocol_of(cfg.eval)
    fp = fingerprint(protocol, device)
    # with eval.onnx and the torch runtime, the ONNX graph is also timed on onnxruntime's CPU (latency_onnx_cpu_s)
    onnx_images = (cfg.eval.onnx_num_images or cfg.eval.latency_num_images) if cfg.eval.onnx and protocol.runtime == "torch" else 0
    cache = LatencyCache(plan.layout.latency_cache_dir)
    geometry = dataclasses.asdict(plan.geometry)
    limit = space.max_latency_per_image_s
    seen: dict[StudentArch, ArchLatency] = {}
    out: list[ArchLatency] = []
    total = len({c.arch for c in plan.candidates})
    for cand in plan.candidates:
        if cand.arch in seen:
            continue
        arch = dataclasses.asdict(cand.arch)
        if space.max_params_count is not None and cand.params > space.max_params_count:
            item = ArchLatency(cand.arch, cand.params, {}, inside=False,
                               reason=f"params {format_count(cand.params)} > max_params {space.max_params}")
        else:
            key = cache_key(arch, geometry, {**protocol.to_dict(), "onnx_cpu_images": onnx_images}, fp)
            entry = cache.get(key) if cfg.run.latency_cache else None
            columns: dict = {}
            error, pending = "", None
            if entry is not None:
                columns = {**entry["result"], "latency_cached": True, "latency_measured_at": entry["measured_at"]}
            else:
                torch.manual_seed(0)
                model = DiT(cand.arch, plan.geometry)
                try:
                    with tempfile.TemporaryDirectory(prefix="dse-latency-") as tmp:
                        result = measure(model, protocol, device, work_dir=Path(tmp))
                        if onnx_images:  # the deployment proxy beside torch: the ONNX graph on onnxruntime's CPU
                            ort = measure(model, dataclasses.replace(protocol, runtime="onnxruntime",
                                                                     num_images=onnx_images), "cpu", work_dir=Path(tmp))
                            result.update(latency_onnx_cpu_s=ort["latency_s"], latency_onnx_threads=ort.get("latency_threads"),
                                          latency_onnx_num_images=ort.get("latency_num_images"),
                                          latency_onnx_batch=ort.get("latency_batch"))
                except Exception as exc:  # noqa: BLE001 - a failed measurement is recorded, not raised
                    error = one_line(exc)
                    result = None
                if result is not None:
                    measured_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
                    pending = {"key": key, "arch": arch, "geometry": geometry, "fingerprint": fp, "result": result,
                               "protocol": {**protocol.to_dict(), "onnx_cpu_images": onnx_images},
                               "measured_at": measured_at} if cfg.run.latency_cache else None
                    if pending is not None and not defer_cache:
                        cache.put(**pending)
                        pending = None
                    columns = {**result, "latency_cached": False, "latency_measured_at": measured_at}
            if columns:
                columns.update(latency_key=key, latency_fingerprint=_json.dumps(fp, sort_keys=True, default=str))
            item = ArchLatency(cand.arch, cand.params, columns, error=error, cache_entry=pending)
            if limit is not None and item.usable and item.columns["latency_s"] / item.columns["latency_num_images"] > limit:
                per_image = 1000 * item.columns["latency_s"] / item.columns["latency_num_images"]
                item = dataclasses.replace(item, inside=False, reason=(
                    f"latency {per_image:.4g} ms/image > max_latency {space.max_latency}"))
        seen[cand.arch] = item
        out.append(item)
        if on_latency:
            on_latency(len(out), total, item)
    tried = [a for a in out if a.columns or a.error]  # measured or read from the cache, not left out by max_params
    if tried and all(a.error for a in tried):
        raise DseError(f"latency: every measurement failed, e.g. {tried[0].arch.name}: {tried[0].error}")
    return out


def commit_latency_cache(plan: StudyPlan, latency: list[ArchLatency]) -> int:
    """Write the measurements `latency_pass(..., defer_cache=True)` kept back into the latency cache (a
    contended one is refused by the cache); how many were written."""
    from dse.latency_cache import LatencyCache

    cache = LatencyCache(plan.layout.latency_cache_dir)
    return sum(cache.put(**a.cache_entry) is not None for a in latency if a.cache_entry)


def measure_latencies(cfg: StudyConfig, on_latency: Callable[[int, int, ArchLatency], None] | None = None,
                      ) -> list[ArchLatency]:
    """`dse latency measure`: the latency pass of the study `cfg` (its candidates, protocol, constraints)
    without training anything; writes only the latency cache. The device and the results folder are
    checked first."""
    from dse.device import resolve_device

    plan = plan_study(cfg)
    resolve_device(cfg.run.device)
    check_folder(cfg.run.results_dir, "results folder")
    return latency_pass(plan, on_latency)


def write_latency_file(plan: StudyPlan, latency: list[ArchLatency]) -> None:
    """<study>/latency.json: the constraints and every architecture of the latency pass (what `dse report`
    draws: the candidates outside the constraints were never trained, so no row says it)."""
    s = plan.config.space
    data = {"constraints": {"max_params": s.max_params_count, "max_latency": s.max_latency,
                            "max_latency_per_image_s": s.max_latency_per_image_s},
            "architectures": [a.to_dict() for a in latency]}
    atomic_write(plan.layout.latency_file, json.dumps(data, indent=1, sort_keys=True, default=str))


def read_latency_file(plan: StudyPlan) -> dict:
    """What `write_latency_file` wrote ({"constraints", "architectures"}); empty ones when there is no
    such file or it is not valid (the report then draws the constraints of the config alone)."""
    s = plan.config.space
    empty = {"constraints": {"max_params": s.max_params_count, "max_latency": s.max_latency,
                             "max_latency_per_image_s": s.max_latency_per_image_s}, "architectures": []}
    try:
        data = json.loads(plan.layout.latency_file.read_text())
    except (OSError, ValueError):
        return empty
    if not isinstance(data, dict) or not isinstance(data.get("architectures"), list):
        return empty
    def whole(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v > 0

    # an entry of a damaged or edited file that does not name an architecture is left out, not drawn
    archs = [a for a in data["architectures"]
             if isinstance(a, dict) and all(whole(a.get(k)) for k in ("depth", "width", "heads", "params"))]
    return {"constraints": empty["constraints"], "architectures": archs}


def fill_latency(plan: StudyPlan, latency: list[ArchLatency]) -> int:
    """Give the complete rows of the plan that have no latency (stored before latency came first, or by a
    run interrupted in its old latency pass) the latency of their architecture; how many were rewritten."""
    store = plan.store
    ids = {s.trial_id for s in plan.specs}
    by_name = {a.arch.name: a for a in latency if a.columns}
    df = store.read()
    todo = df[df["trial_id"].isin(ids) & (df["status"] == COMPLETE) & df["latency_s"].isna()]
    done = 0
    for record in todo.to_dict("records"):
        row = {k: (None if is_null(v) else v) for k, v in record.items()}
        try:
            name = StudentArch(int(row["depth"]), int(row["width"]), int(row["heads"])).name
        except (KeyError, TypeError, ValueError):  # a row without its architecture: nothing to give it
            continue
        if name in by_name:
            store.write({**row, **by_name[name].columns})
            done += 1
    return done


def _releasing(claims, on_event: OnEvent | None) -> OnEvent:
    """`on_event`, releasing a trial's claim as soon as its row is stored."""

    def handle(trial_id: str, kind: str, data: dict) -> None:
        if kind in STATUSES:
            claims.release([trial_id])
        if on_event:
            on_event(trial_id, kind, data)

    return handle


def measure_latency_pass(plan: StudyPlan, on_event: OnEvent | None = None) -> int:
    """With `eval.latency_recheck`: measure, one at a time in this process, the latency of every complete
    trial of the plan on its TRAINED weights (`latency_trained_s`, `latency_trained_s_std`) when its row has
    none yet, and rewrite those rows. Training is over by then, so each measurement has the device to
    itself. Returns how many were measured; a rerun after an interruption goes on where it stopped."""
    from dse.trial import measure_trained_latency

    store = plan.store
    ids = {s.trial_id for s in plan.specs}

    def pending():
        df = store.read()
        return df[df["trial_id"].isin(ids) & (df["status"] == COMPLETE) & df["latency_trained_s"].isna()]

    # claimed like trials, so that two runs of the study do not measure (and write) the same row
    with store.claim(sorted(pending()["trial_id"])) as claims:
        todo = pending()  # read again: measured meanwhile by another run -> not again
        todo = todo[todo["trial_id"].isin(set(claims.got))]
        for record in todo.to_dict("records"):
            row = {k: (None if is_null(v) else v) for k, v in record.items()}
            row = measure_trained_latency(row, plan.config.run.device, plan.layout.artifacts_dir(row["trial_id"]))
            store.write(row)
            claims.release([row["trial_id"]])
            if on_event:
                on_event(row["trial_id"], LATENCY if row["status"] == COMPLETE else FAILED, row)
    return len(todo)


FRONT_KEYS = ("candidate_id", "trial_id", "depth", "width", "heads", "params", "n", "fid", "fid_low", "fid_high",
              "latency_s", "front_status", "tied_with")  # what StudyOutcome.front says of each point


def front_points(rows) -> list[dict]:
    """The points of `rows` (store rows of one study) on the noise-aware front, FRONT and TIED, sorted by
    params: a dict of FRONT_KEYS each, missing values as None."""
    points = noise_aware_front(group_points(rows))
    points = points[points["front_status"].isin([FRONT, TIED])]
    out = []
    for p in points.to_dict("records"):
        p["trial_id"] = p["trial_ids"][0]
        out.append({k: (p[k] if isinstance(p[k], list) else None if is_null(p[k]) else p[k]) for k in FRONT_KEYS})
    return out


def _finish(plan: StudyPlan, skipped: int, elsewhere: int = 0, latency: list[ArchLatency] | None = None,
            outside: int = 0) -> StudyOutcome:
    df = plan.store.read()
    report = write_study_report(plan, df)
    mine = df[df["trial_id"].isin({s.trial_id for s in plan.specs})]
    return StudyOutcome(
        plan=plan, report_path=report,
        num_complete=int((mine["status"] == COMPLETE).sum()), num_failed=int((mine["status"] == FAILED).sum()),
        skipped=skipped, front=front_points(mine), elsewhere=elsewhere,
        num_stopped=int((mine["status"] == STOPPED).sum()),
        warnings=study_warnings(mine) + latency_warnings(latency or []), latency=list(latency or []), outside=outside,
    )


def latency_warnings(latency: list[ArchLatency]) -> list[str]:
    """What the summary says about latencies it could not trust (contended) or measure (failed)."""
    out = []
    contended = [a.arch.name for a in latency if a.columns.get("latency_contended")]
    if contended:
        out.append(f"latency of {', '.join(contended)} was measured while other work used the CPUs (re-measured, "
                   "still contended): not cached and not ranked; run the study again on a quiet machine to "
                   "measure it again")
    failed = [a for a in latency if a.error]
    if failed:
        out.append(f"latency measurement failed for {', '.join(a.arch.name for a in failed)} ({failed[0].error}): "
                   "their trials were not trained")
    return out


def load_study_dir(name: str, results_dir: str | Path = "results", reports_dir: str | Path = "reports") -> StudyConfig:
    """The config `dse run` saved in the folder `results_dir/name`, as the study of that folder: its
    name is the folder's and its results and reports folders are those given, never the ones saved
    in the file (so a copied study reads its own store and writes its own report). A missing study,
    or a study.json that is not JSON, not an object or not a valid config, is a DseError naming it."""
    layout = StudyLayout(Path(results_dir), check_name(name), Path(reports_dir))
    path = layout.study_file
    if not path.is_file():
        if layout.study_dir.is_dir():
            raise DseError(f"study {name!r}: {path} is missing, so its configuration is unknown; run the study "
                           "with `dse run` to write it")
        known = ", ".join(study_names(results_dir)) or "none"
        raise DseError(f"no study {name!r} in {results_dir}/ (looked for {path}); known studies: {known}")
    fix = "fix it, or delete the study folder and run the study again"
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:  # not JSON, or not UTF-8
        raise DseError(f"{path} is not valid JSON ({exc}); {fix}") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k, {}), dict) for k in ("study", "run")):
        raise DseError(f"{path} is not a study configuration (a JSON object with [study] and [run] objects); {fix}")
    here = {"results_dir": str(results_dir), "reports_dir": str(reports_dir)}
    data = {**data, "study": {**data.get("study", {}), "name": name}, "run": {**data.get("run", {}), **here}}
    try:
        return study_from_dict(data, source=str(path))
    except (TypeError, ValueError, AttributeError) as exc:  # a value of a type no config has
        raise DseError(f"{path} is not a valid study configuration ({exc}); {fix}") from None


def report_study(name: str, results_dir: str | Path = "results", reports_dir: str | Path = "reports") -> Path:
    """Re-render the report of the study in the folder `results_dir/name` as `reports_dir/name.html`."""
    cfg = load_study_dir(name, results_dir, reports_dir)
    check_folder(reports_dir, "reports folder")
    return write_study_report(plan_study(cfg))


def write_study_report(plan: StudyPlan, df=None) -> Path:
    """Render the study's store (`df`, if it was already read) as the HTML Pareto report."""
    from dse.report import write_report

    proposal = plan.proposal
    proposed = None if proposal is None else proposal.to_dict()
    title = f"dse study {plan.config.name}: {plan.config.dataset}, budget {plan.config.space.budget}"
    rows = (plan.store.read() if df is None else df).copy()
    # the sample grids shown are those in the study's own artifacts folders, whatever a row names
    rows["samples_png"] = [_own_samples(plan, tid) for tid in rows["trial_id"]]
    latency = read_latency_file(plan)
    excluded = [a for a in latency["architectures"] if a.get("inside") is False]
    return write_report(rows, plan.report_path, proposed=proposed, title=title,
                        constraints=latency["constraints"], excluded=excluded)


def _own_samples(plan: StudyPlan, trial_id: str) -> str | None:
    """The trial's sample grid in the study's artifacts folder, if the id is a safe name and it is there."""
    try:
        path = plan.layout.artifacts_dir(trial_id) / SAMPLES_FILE
    except DseError:
        return None
    return str(path) if path.is_file() else None


STATUS_KINDS = ("done", "running", FAILED, STOPPED, "pending", OUTSIDE)  # what `dse status` counts


def study_status(name: str, results_dir: str | Path = "results") -> dict:
    """Where study `name` stands: counts and ids of its trials that are done (row complete), running
    (a live claim), failed, stopped, and pending (planned in its study.json, no row and no live
    claim; `resumable`: those of them with a checkpoint to resume from). Reads files only."""
    cfg = load_study_dir(name, results_dir)  # planned in the folder it was found in, as `dse run` did from its own
    plan = plan_study(cfg)
    store = plan.store
    df = store.read()
    rows = {r["trial_id"]: r for r in df[["trial_id", "status", "error", "finished_at"]].to_dict("records")}
    live = store.live_claims()
    planned = [s.trial_id for s in plan.specs]
    ids = planned + sorted(set(rows) - set(planned))  # rows of trials no longer planned count too
    outside_archs = {a.get("name") for a in read_latency_file(plan)["architectures"] if a.get("inside") is False}
    outside = {s.trial_id for s in plan.specs if s.arch.name in outside_archs}
    out: dict = {k: [] for k in STATUS_KINDS}
    for tid in ids:
        row, claim = rows.get(tid), live.get(tid)
        status = None if row is None else row["status"]
        if row is None and claim is None and tid in outside:
            out[OUTSIDE].append(tid)
        elif claim is not None and status != COMPLETE and not _row_after(row, claim.started_at):
            out["running"].append(claim.to_dict())
        elif status == COMPLETE:
            out["done"].append(tid)
        elif status == FAILED:
            out[FAILED].append({"trial_id": tid, "error": "" if is_null(row["error"]) else str(row["error"])})
        elif status == STOPPED:
            out[STOPPED].append(tid)
        else:
            out["pending"].append(tid)
    artifacts = plan.study_dir / ARTIFACTS_DIR
    return {
        "study": name, "dir": str(plan.study_dir), "dataset": cfg.dataset, "budget": cfg.space.budget,
        "total": len(ids), "counts": {k: len(out[k]) for k in STATUS_KINDS}, **out,
        "resumable": [t for t in out["pending"] if (artifacts / t / LAST_CHECKPOINT).is_file()],
    }


def _row_after(row: dict | None, started_at: str) -> bool:
    """True when `row` was finished after a claim started at `started_at` (the claimer's own row)."""
    if row is None or is_null(row.get("finished_at")) or not started_at:
        return False
    from datetime import datetime

    try:
        return datetime.fromisoformat(str(row["finished_at"])) >= datetime.fromisoformat(started_at)
    except (TypeError, ValueError):
        return False


def studies_status(results_dir: str | Path = "results") -> list[dict]:
    """`study_status` of every study under `results_dir` (`layout.study_names`), by name; one that
    cannot be read is {"study": name, "error": why}, and the others are still read."""
    out = []
    for name in study_names(results_dir):
        try:
            out.append(study_status(name, results_dir))
        except DseError as exc:
            out.append({"study": name, "error": str(exc)})
    return out
