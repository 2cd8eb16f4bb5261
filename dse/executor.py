"""Owns running trials with Ray Tune (the only module that imports ray): one Tune trial per
candidate, on a local Ray by default or on a cluster given its address.

Each Tune trial calls `dse.trial.run_trial` and writes its row to the results store itself, so a
finished trial is in the store even if the driver dies; progress flows back through `tune.report`
(every report carries the trial's "params", so a scheduler can rank partial results). Tune reuses a
worker for the next trial with the same resources (`reuse_actors`), so the imports and the CUDA start
are paid once per worker rather than once per trial (bench/orchestrate.py, 2 CPUs: 0.17 s of overhead
a trial instead of 1.9 s, and the first trial's 4 s of imports once per worker instead of every time).

- Resources: per trial, from `dse.search.trial_resources`: a fraction of a GPU chosen from the
  candidate's estimated peak training memory (or the fraction given), and the CPUs that go with it.
- Search: "grid" runs every spec once; "optuna" samples `num_samples` distinct specs with Optuna's
  multi-objective TPE (through Ray Tune's `OptunaSearch`) over (fid, params), both minimised.
  Latency is measured after the search in its own pass, so it cannot steer the sampler.
- Halving: `HalvingScheduler` stops trials whose partial (params, loss) is dominated at a rung
  (`dse.search.SuccessiveHalving`); the driver writes their rows with status "stopped".
- Cluster: `prepare_cluster` checks the address (format, a TCP connect and a token probe of the GCS,
  each within PROBE_TIMEOUT_S), connects, and checks the resources asked against the cluster's nodes,
  all before a study writes anything; `run_trials` reuses that connection and those resources.
- Ctrl-C: Tune's own SIGINT handler (which stops the run gracefully and returns as if it had
  finished) is off, so an interrupted `run_trials` raises KeyboardInterrupt; the trials keep their
  checkpoints (`last.pt`) and the next run resumes them.
- Priority: the raylet starts trial workers at `RAY_worker_niceness` (Ray's default: nice 15, so a
  trial starves beside any other load); a local Ray started here runs them at the driver's own
  niceness instead (`RAY_worker_niceness` set in the environment wins). Each trial reports its niceness.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import random
import socket
import sys
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta, timezone
from functools import partial
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage reports: runs offline
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")  # Ctrl-C raises KeyboardInterrupt (module docstring)
os.environ.setdefault("RAY_worker_niceness", str(os.nice(0)))  # trials at the driver's priority, not nice 15

import ray  # noqa: E402
from ray import tune  # noqa: E402
from ray._raylet import AuthenticationTokenLoader, Config, InnerGcsClient  # noqa: E402 - the token and GCS probes
from ray.tune.execution.placement_groups import PlacementGroupFactory  # noqa: E402
from ray.tune.schedulers import FIFOScheduler, TrialScheduler  # noqa: E402

from dse import search as dse_search  # noqa: E402
from dse.config import parse_address  # noqa: E402
from dse.errors import DseError  # noqa: E402
from dse.sizing import count_params  # noqa: E402
from dse.store import ResultsStore, is_null  # noqa: E402
from dse.trial import TrialSpec, failure_text, run_trial  # noqa: E402

log = logging.getLogger(__name__)

# Event callback: (trial_id, kind, data); kinds are "start", "train", "complete", "failed", "stopped".
OnEvent = Callable[[str, str, dict], None]
SEARCHES = ("grid", "optuna")
# What the optuna search minimises (latency comes later, in the study's own pass).
SEARCH_OBJECTIVES = ("fid", "params")
STOPPED = "stopped"  # the store status of a trial stopped by successive halving


def _total_steps(spec: TrialSpec) -> int:
    """The trial's training length (steps, or epochs over its pairs); the configured steps if the
    pairs cannot be opened (the trial then fails on its own)."""
    if spec.train.epochs <= 0:
        return spec.train.steps
    try:
        from dse.data.pairs import PairStore
        from dse.distill.train import total_steps

        return total_steps(spec.train, len(PairStore.open(spec.pairs_dir, verify=False)))
    except Exception:  # noqa: BLE001 - reported by run_trial itself
        return spec.train.steps


def _trainable(config: dict, specs: dict[str, TrialSpec], store_root: str) -> None:
    """The Tune function trainable: run one trial, store its row, report progress and the result."""
    spec = specs[config["trial_id"]]
    params = count_params(spec.arch, spec.geometry)
    total = _total_steps(spec)

    def progress(kind: str, data: dict) -> None:
        if kind == "train":  # "fid": None, because Tune checks that every report has the searcher's metrics
            tune.report({"phase": "train", "step": data["step"], "loss": data["loss"], "params": params,
                         "total_steps": total, "fid": None})

    start = time.perf_counter()
    result = run_trial(spec, progress)
    trial_seconds = time.perf_counter() - start
    _release_gpu_memory()  # the actor may run other trials next (reuse_actors); a shared GPU gets it back
    row = result.row
    try:
        ResultsStore(store_root).write(row)
    except OSError as exc:  # a full or read-only disk: the trial fails saying so (its row cannot be kept)
        row = {**row, "status": "failed", "error": f"its row could not be stored: {failure_text(exc, store_root)}"}
    store_seconds = time.perf_counter() - start - trial_seconds
    tune.report({
        "phase": "done", "status": row["status"], "error": row.get("error") or "",
        "params": row.get("params", params), "fid": row.get("fid"), "latency_s": row.get("latency_s"),
        "trial_seconds": trial_seconds, "store_seconds": store_seconds,
        "nice": os.nice(0),  # the worker's priority (module docstring)
    })


def _release_gpu_memory() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        gc.collect()
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------
# The cluster: address, reachability, token authentication
# ---------------------------------------------------------------------------------------------

PROBE_TIMEOUT_S = 5.0  # a cluster that does not answer within this is reported, not waited for
TOKEN_FILE = Path("~") / ".ray" / "auth_token"  # where `ray start` and ray.init keep a node's token
TOKEN_HELP = ("on this machine set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN=<token> (or RAY_AUTH_TOKEN_PATH=<file>, "
              "or put the token in ~/.ray/auth_token); `ray get-auth-token` on the head node prints the token")


def _client_token() -> tuple[str, str]:
    """(token, where it came from) as Ray reads it on this machine: $RAY_AUTH_TOKEN, else the file
    $RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token; ("", "") when there is none."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip(), "RAY_AUTH_TOKEN"
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or TOKEN_FILE).expanduser()
    try:
        return path.read_text().strip(), str(path)
    except OSError:
        return "", ""


def _probe_gcs(address: str) -> str:
    """Ask the cluster's GCS for its id as ray.init would (with this process's token settings), its
    C++ log lines kept off the terminal: "ok", "unauthenticated", or why it did not answer."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        InnerGcsClient.standalone(address, None, int(PROBE_TIMEOUT_S * 1000 / 4))  # it tries about 4 times
    except ray.exceptions.AuthenticationError:
        return "unauthenticated"
    except Exception as exc:  # noqa: BLE001 - any other failure means: not a Ray cluster that answers
        return f"{type(exc).__name__}: {exc}"
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    return "ok"


def _enable_token_mode() -> None:
    """Present this machine's token to the cluster, as Ray itself does for a local cluster."""
    os.environ["RAY_AUTH_MODE"] = "token"
    Config.initialize("")  # Ray caches its settings and the token: let both see the token mode
    AuthenticationTokenLoader.instance().reset_cache()


def check_reachable(address: str) -> None:
    """A DseError within seconds unless the cluster at `address` answers: a TCP connect, then (for a
    HOST:PORT address) its GCS, which also says whether it wants a token. When it does and this
    machine has one (`_client_token`) but RAY_AUTH_MODE is unset, token mode is turned on here;
    without a token, or with one it refuses, the error says what to set."""
    parsed = parse_address(address)
    if parsed is None:
        return
    scheme, host, port = parsed
    try:
        socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise DseError(f"cannot reach the Ray cluster at {address} ({why}): is `ray start --head --port {port}` "
                       f"running on {host}, and is the port open from here? Or run without --address for a "
                       "local Ray") from None
    if scheme:  # Ray Client speaks its own protocol; ray.init reports its failures
        return
    answer = _probe_gcs(f"{host}:{port}")
    token, source = _client_token()
    if answer == "unauthenticated" and "RAY_AUTH_MODE" not in os.environ and token:
        _enable_token_mode()
        answer = _probe_gcs(f"{host}:{port}")
    if answer == "unauthenticated":
        if not token:
            raise DseError(f"the Ray cluster at {address} uses token authentication and this machine has no token: "
                           f"{TOKEN_HELP}")
        raise DseError(f"the Ray cluster at {address} refuses this machine's token (from {source}, RAY_AUTH_MODE="
                       f"{os.environ.get('RAY_AUTH_MODE', '')}): {TOKEN_HELP}")
    if answer != "ok":
        raise DseError(f"cannot reach the Ray cluster at {address}: it does not answer as one ({answer}); give the "
                       "head's GCS port (`ray start --head --port`, 6379 by default)")


def connect(address: str = "") -> None:
    """Connect this process to Ray unless it already is: the cluster at `address` (or $RAY_ADDRESS),
    checked first by `check_reachable`, else a local Ray started here."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS", "")
    if address:
        check_reachable(address)
    try:
        ray.init(address=address or None, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.ERROR, configure_logging=True)
    except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        raise DseError(f"cannot connect to {where}: {str(exc).splitlines()[0]}") from None


def prepare_cluster(specs: list[TrialSpec], *, cpus_per_trial: float, gpus_per_trial: float,
                    address: str = "") -> dict[str, tuple[float, float]]:
    """Connect to Ray (`connect`) and plan each spec's (CPUs, GPUs) against its nodes (`plan_resources`);
    a DseError for an unreachable cluster or a request no node can meet. Called before a study
    writes anything; pass the result to `run_trials`."""
    connect(address)
    node_cpus, node_gpus = _node_shape()
    most_cpus = max([n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")] or [node_cpus])
    if cpus_per_trial > most_cpus:
        raise DseError(f"cpus_per_trial {cpus_per_trial:g} but no Ray node has more than {most_cpus:g} CPUs; "
                       f"use --cpus-per-trial {most_cpus:g} or less (0: every CPU of a node)")
    return plan_resources(specs, cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial,
                          node_cpus=node_cpus, node_gpus=node_gpus)


# ---------------------------------------------------------------------------------------------
# Resources
# ---------------------------------------------------------------------------------------------


def _node_shape() -> tuple[float, float]:
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


def _resources_of(resources: dict[str, tuple[float, float]], config: dict) -> PlacementGroupFactory:
    cpus, gpus = resources[config["trial_id"]]
    bundle = {"CPU": cpus}
    if gpus > 0:
        bundle["GPU"] = gpus
    return PlacementGroupFactory([bundle])


# ---------------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------------


def run_trials(
    specs: list[TrialSpec], store_root: str | Path, *, storage_dir: str | Path, cpus_per_trial: float = 0,
    gpus_per_trial: float = -1, address: str = "", on_event: OnEvent | None = None, search: str = "grid",
    num_samples: int = 0, halving: bool = False, halving_rungs: int = 3, halving_eta: int = 3, seed: int = 0,
    context: Iterable[TrialSpec] = (), resources: dict[str, tuple[float, float]] | None = None,
) -> None:
    """Run the specs as Ray Tune trials and wait for all of them; Ctrl-C raises KeyboardInterrupt.

    Ray: a local one (started here unless already running), or the cluster at `address` / $RAY_ADDRESS;
    `resources` from `prepare_cluster` (which connected already) are used as they are, else planned here.
    Resources per trial: `gpus_per_trial` (a fraction such as 0.25 packs four trials on a GPU;
    -1 chooses from each candidate's estimated memory, 0 without GPUs) and `cpus_per_trial` (0: the
    CPUs that go with the GPU share, or all of a node's CPUs for a CPU-only trial, so CPU trials run one
    at a time). `search`: "grid" runs every spec once; "optuna" runs `num_samples` distinct specs
    (0: all) sampled by multi-objective TPE over (fid, params), seeded by `seed`; specs whose rows are
    already in the store as complete or stopped are told to the sampler and never run again, and so
    are the study's other candidates in `context` (done, or run by another process), which it learns
    from through their rows (failed ones included) and never runs.
    `halving` stops trials dominated in (params, loss) at the rungs (`dse.search`); their rows are
    written with status "stopped".
    """
    if search not in SEARCHES:
        raise DseError(f"search {search!r}: use one of {', '.join(SEARCHES)}")
    if halving and (halving_rungs < 2 or halving_eta < 2):
        raise DseError("halving needs halving_rungs >= 2 and halving_eta >= 2")
    by_id = {s.trial_id: s for s in specs}
    if not by_id:
        return
    store = ResultsStore(store_root)
    if resources is None or not ray.is_initialized():
        planned = prepare_cluster(list(by_id.values()), cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial,
                                  address=address)
        resources = planned if resources is None else resources
    for tid, spec in by_id.items():
        if not spec.threads:  # a trial's torch threads = the CPUs Ray gave it
            by_id[tid] = dataclasses.replace(spec, threads=max(1, int(resources[tid][0])))
    trainable = tune.with_resources(
        tune.with_parameters(_trainable, specs=by_id, store_root=str(store.root.resolve())),
        partial(_resources_of, resources),
    )
    naming = dict(trial_name_creator=_trial_name, trial_dirname_creator=_trial_name)
    scheduler, stopped = None, {}
    if halving:
        scheduler = HalvingScheduler(
            dse_search.SuccessiveHalving(halving_rungs, halving_eta), by_id,
            partial(_write_stopped, store, by_id, on_event, stopped),
        )
    if search == "grid":
        param_space = {"trial_id": tune.grid_search(list(by_id))}
        tune_config = tune.TuneConfig(scheduler=scheduler, reuse_actors=True, **naming)
    else:
        others = {s.trial_id: s for s in context if s.trial_id not in by_id}
        known = known_results(store, [*others, *by_id], failed=others)  # a failed spec of ours may run again
        fresh = [tid for tid in by_id if tid not in known]
        n = min(num_samples or len(fresh), len(fresh))
        if n == 0:
            return
        keys = {tid: search_key(s) for tid, s in {**others, **by_id}.items()}
        param_space = {}
        tune_config = tune.TuneConfig(
            search_alg=make_optuna_search(keys, known, seed, unavailable=set(others)), num_samples=n,
            scheduler=scheduler, reuse_actors=True, **naming)
    tuner = tune.Tuner(
        trainable, param_space=param_space, tune_config=tune_config,
        run_config=tune.RunConfig(
            name="tune", storage_path=str(Path(storage_dir).resolve()), verbose=0,
            callbacks=[Events(on_event, stopped)] if on_event else None,
        ),
    )
    tuner.fit()


def _trial_name(trial) -> str:
    return trial.config["trial_id"]


class Events(tune.Callback):
    """Turns Tune's trial callbacks into dse progress events; `stopped` holds the trials that
    successive halving stopped (their rows are already written), told as "stopped" when they end."""

    def __init__(self, on_event: OnEvent, stopped: dict[str, dict] | None = None):
        self.on_event = on_event
        self.stopped = stopped if stopped is not None else {}

    def __getstate__(self) -> dict:
        # Tune pickles its callbacks with the experiment state; the handler (a live table with locks,
        # a terminal) belongs to this driver process only, so a restored copy reports nothing.
        return {"stopped": self.stopped}

    def __setstate__(self, state: dict) -> None:
        self.on_event = lambda trial_id, kind, data: None
        self.stopped = state["stopped"]

    def on_trial_start(self, iteration, trials, trial, **info):
        self.on_event(trial.config["trial_id"], "start", {})

    def on_trial_result(self, iteration, trials, trial, result, **info):
        tid = trial.config["trial_id"]
        if result.get("phase") == "train":
            self.on_event(tid, "train", {"step": result["step"], "loss": result["loss"]})
        elif result.get("phase") == "done":
            self.on_event(tid, result["status"], dict(result))

    def on_trial_complete(self, iteration, trials, trial, **info):
        tid = trial.config["trial_id"]
        if tid in self.stopped:
            self.on_event(tid, STOPPED, self.stopped[tid])

    def on_trial_error(self, iteration, trials, trial, **info):
        self.on_event(trial.config["trial_id"], "failed", {"error": "the Ray worker running it failed"})


# ---------------------------------------------------------------------------------------------
# Successive halving
# ---------------------------------------------------------------------------------------------


def halving_group(spec: TrialSpec, total_steps: int) -> str:
    """Trials whose training losses are comparable: same setup, loss function and run length."""
    return f"{spec.train.setup}/{spec.train.loss}/{total_steps}"


class HalvingScheduler(FIFOScheduler):
    """A Tune scheduler that asks `search.SuccessiveHalving` at every training report and stops the
    trials it rejects; `on_stop(trial_id, stop, result)` records them (the trial's own code never
    writes a row for them: with synchronous reporting it is blocked in `tune.report` until it stops)."""

    def __init__(self, halving: dse_search.SuccessiveHalving, specs: dict[str, TrialSpec],
                 on_stop: Callable[[str, dse_search.Stop, dict], None]):
        super().__init__()
        self.halving, self.specs, self.on_stop = halving, specs, on_stop

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if result.get("phase") != "train":
            return TrialScheduler.CONTINUE
        tid = trial.config["trial_id"]
        total = int(result["total_steps"])
        stop = self.halving.observe(tid, halving_group(self.specs[tid], total), params=result["params"],
                                    step=int(result["step"]), total_steps=total, loss=result["loss"])
        if stop is None:
            return TrialScheduler.CONTINUE
        self.on_stop(tid, stop, result)
        return TrialScheduler.STOP

    def debug_string(self) -> str:
        return f"Successive halving on the non-dominated rank (rungs {self.halving.rungs}, eta {self.halving.eta})."


def stopped_row(spec: TrialSpec, stop: dse_search.Stop, train_seconds: float | None = None) -> dict[str, Any]:
    """The store row of a trial stopped by successive halving: its configuration, the step and loss
    it reached, status "stopped" and the reason."""
    from dse.trial import base_row

    row = base_row(spec)
    now = datetime.now(timezone.utc)
    row.update({
        "status": STOPPED, "error": stop.reason, "steps": stop.step, "final_loss": stop.loss,
        "train_seconds": train_seconds, "finished_at": now.isoformat(timespec="seconds"),
    })
    if train_seconds is not None:
        row["started_at"] = (now - timedelta(seconds=train_seconds)).isoformat(timespec="seconds")
    return row


def _write_stopped(store: ResultsStore, specs: dict[str, TrialSpec], on_event: OnEvent | None,
                   stopped: dict[str, dict], trial_id: str, stop: dse_search.Stop, result: dict) -> None:
    """Driver side: store the stopped trial's row; `Events` tells the caller when Tune has stopped it."""
    row = stopped_row(specs[trial_id], stop, result.get("time_total_s"))
    try:
        store.write(row)
    except Exception as exc:  # noqa: BLE001 - the study goes on; the trial will simply run again next time
        log.error("could not store the stopped trial %s: %s", trial_id, exc)
        if on_event:
            on_event(trial_id, "failed", {"error": f"{stop.reason}; its row could not be stored: {exc}"})
        return
    stopped[trial_id] = {"error": stop.reason, "step": stop.step, "loss": stop.loss, "rank": stop.rank,
                         "rung": stop.rung, "params": row["params"]}


# ---------------------------------------------------------------------------------------------
# Optuna: multi-objective TPE over the candidates, each run at most once
# ---------------------------------------------------------------------------------------------


def search_key(spec: TrialSpec) -> tuple:
    """The spec's path in the optuna search space (`search.SEARCH_LEVELS`): training, width, depth, heads."""
    return (spec.variant or f"{spec.train.setup}-{spec.train.loss}", spec.arch.width, spec.arch.depth, spec.arch.heads)


# A result the sampler is told: ("complete", [fid, params]), ("pruned", None) or ("fail", None).
Known = tuple[str, "list[float] | None"]


def known_results(store: ResultsStore, ids: list[str], *, failed: Iterable[str] = ()) -> dict[str, Known]:
    """trial_id -> what the store says of it, for the ids with a row that counts: complete (with both
    objectives), stopped or complete without an FID (pruned) and, for the ids in `failed`, failed."""
    failed = set(failed)
    df = store.read()
    out: dict[str, Known] = {}
    for rec in df[df["trial_id"].isin(set(ids))].to_dict("records"):
        tid, status = rec["trial_id"], rec["status"]
        values = [rec.get(k) for k in SEARCH_OBJECTIVES]
        if status == "complete" and not any(map(is_null, values)):
            out[tid] = ("complete", [float(v) for v in values])
        elif status in ("complete", STOPPED):
            out[tid] = ("pruned", None)
        elif status == "failed" and tid in failed:
            out[tid] = ("fail", None)
    return out


_optuna_class = None


def make_optuna_search(keys: dict[str, tuple], known: dict[str, Known], seed: int = 0, unavailable=()):
    """A `DistinctOptunaSearch`: Ray Tune's `OptunaSearch` with seeded multi-objective TPE over
    (fid, params), sampling a candidate as a path of categorical choices (`search.CandidateTree` over
    `keys`, trial_id -> `search_key`), told the results in `known` and never suggesting those nor the
    `unavailable` ids (candidates of the study run elsewhere)."""
    global _optuna_class
    try:
        import optuna
        from ray.tune.search.optuna import OptunaSearch
    except ImportError:
        raise DseError("search = optuna needs the optuna package: pip install optuna") from None
    if _optuna_class is None:
        _optuna_class = _define_optuna_class(OptunaSearch, optuna)
    return _optuna_class(keys, known, seed, unavailable)


def _define_optuna_class(OptunaSearch, ot):
    class DistinctOptunaSearch(OptunaSearch):
        """OptunaSearch over the candidates that never suggests one twice.

        A sampled candidate that already ran (or is running) is not run again: its Optuna trial is
        told that candidate's result (at once, or when the running one ends) and the sampler is asked
        again; after MAX_DRAWS duplicates in a row, the next untried candidate in a seeded order is
        enqueued. A trial stopped by halving is told as pruned, a failed one as failed.
        """

        MAX_DRAWS = 200
        STATES = {"complete": ot.trial.TrialState.COMPLETE, "pruned": ot.trial.TrialState.PRUNED,
                  "fail": ot.trial.TrialState.FAIL}

        def __init__(self, keys: dict[str, tuple], known: dict[str, Known], seed: int, unavailable=()):
            ot.logging.set_verbosity(ot.logging.WARNING)
            self._tree = dse_search.CandidateTree(keys)
            super().__init__(space=self._define, metric=list(SEARCH_OBJECTIVES),
                             mode=["min"] * len(SEARCH_OBJECTIVES), seed=seed)
            self._order = random.Random(seed).sample(sorted(keys), len(keys))  # the fallback order
            self._outcome: dict[str, Known] = {}
            self._running: set[str] = set(unavailable) - set(known)
            self._waiting: dict[str, list] = {}  # candidate -> Optuna trials sampled while it was running
            self._candidate: dict[str, str] = {}  # Tune trial id -> candidate
            for tid, outcome in known.items():
                path = self._tree.path(tid)
                self._ot_study.add_trial(ot.trial.create_trial(
                    state=self.STATES[outcome[0]], values=outcome[1], params={n: v for n, (v, _) in path.items()},
                    distributions={n: ot.distributions.CategoricalDistribution(o) for n, (_, o) in path.items()}))
                self._outcome[tid] = outcome

        def _define(self, ot_trial) -> None:  # the define-by-run space (OptunaSearch needs one to start)
            self._tree.walk(ot_trial.suggest_categorical)

        def _tell(self, ot_trial, tid: str) -> None:
            state, values = self._outcome[tid]
            self._ot_study.tell(ot_trial, values, state=self.STATES[state])

        def _tried(self, tid: str) -> bool:
            return tid in self._outcome or tid in self._running

        def suggest(self, trial_id: str):
            if all(self._tried(t) for t in self._order):
                return self.FINISHED
            for _ in range(self.MAX_DRAWS):
                ot_trial = self._ot_study.ask()
                tid = self._tree.walk(ot_trial.suggest_categorical)
                if not self._tried(tid):
                    break
                if tid in self._outcome:
                    self._tell(ot_trial, tid)
                else:
                    self._waiting.setdefault(tid, []).append(ot_trial)
            else:
                tid = next(t for t in self._order if not self._tried(t))
                self._ot_study.enqueue_trial({n: v for n, (v, _) in self._tree.path(tid).items()})
                ot_trial = self._ot_study.ask()
                self._tree.walk(ot_trial.suggest_categorical)  # takes the enqueued choices: tid
            self._ot_trials[trial_id] = ot_trial
            self._candidate[trial_id] = tid
            self._running.add(tid)
            return {"trial_id": tid}

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
            tid = self._candidate.get(trial_id)
            if tid is None or tid in self._outcome:
                return
            result = result or {}
            values = [result.get(k) for k in SEARCH_OBJECTIVES]
            if result.get("phase") == "done" and result.get("status") == "complete" and not any(map(is_null, values)):
                self._outcome[tid] = ("complete", [float(v) for v in values])
            elif result.get("phase") == "train" and not error:  # stopped by halving
                self._outcome[tid] = ("pruned", None)
            else:
                self._outcome[tid] = ("fail", None)
            self._running.discard(tid)
            for ot_trial in [self._ot_trials[trial_id], *self._waiting.pop(tid, [])]:
                try:
                    self._tell(ot_trial, tid)
                except Exception as exc:  # noqa: BLE001 - a sampler bookkeeping issue must not stop the study
                    log.warning("optuna: could not tell trial %s: %s", tid, exc)
            self._completed_trials.add(trial_id)

    DistinctOptunaSearch.__module__ = __name__
    DistinctOptunaSearch.__qualname__ = "DistinctOptunaSearch"
    globals()["DistinctOptunaSearch"] = DistinctOptunaSearch  # importable by name, so it pickles
    return DistinctOptunaSearch
