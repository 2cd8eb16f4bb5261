"""Owns the `dse` command: a thin typer app where each command parses its options and makes one
library call. Mistakes a user can make (DseError) print one line and exit with code 2.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shlex
import signal
import sys
from pathlib import Path
from typing import Optional

import typer

from dse.config import StudyConfig, TeacherConfig, dataset_geometry, parse_assignments, study_for_run, study_for_sizing
from dse.errors import DseError
from dse.events import FAILED, STOPPED
from dse.types import Geometry

app = typer.Typer(
    help="Find the best tiny Diffusion Transformer for a parameter budget by distillation.",
    no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
)
teacher_app = typer.Typer(help="Make and inspect teacher (noise, label, image) pairs.", no_args_is_help=True)
app.add_typer(teacher_app, name="teacher")
latency_app = typer.Typer(help="Measure candidates' latency before training, and the latency cache.", no_args_is_help=True)
app.add_typer(latency_app, name="latency")

SpaceOpt = typer.Option(None, "--space", help="Search-space TOML file [default: search_spaces/demo.toml].")
BudgetOpt = typer.Option(None, "--budget", help='Parameter budget: 420k, 0.42M, 5M, 5e6 or 5000000.')
LowerOpt = typer.Option(None, "--lower", help="A candidate fits when lower*budget <= params [default 0.8].")
UpperOpt = typer.Option(None, "--upper", help="... and params <= upper*budget [default 1.02; 1 for a hard cap].")
JsonOpt = typer.Option(False, "--json", help="Print JSON instead of a table.")
MaxLatencyOpt = typer.Option(None, "--max-latency", help='Train only candidates at most this fast, with the unit: per image (2ms) or per N images (30s/50000) [none].')
MaxParamsOpt = typer.Option(None, "--max-params", help="Train only candidates with at most this many parameters: 150k, 1.2M [none].")
RuntimeOpt = typer.Option(None, "--latency-runtime", help="Where latency is measured: torch, onnxruntime or command (with --set eval.latency_command=...) [torch].")
ImageSizeOpt = typer.Option(None, "--image-size", help="Image side in pixels (with --channels, --num-classes).")
ChannelsOpt = typer.Option(None, "--channels", help="Image channels.")
ClassesOpt = typer.Option(None, "--num-classes", help="Number of classes.")
PatchOpt = typer.Option(None, "--patch-size", help="DiT patch size [the space's; 2 with --image-size].")


def _echo(text: str = "") -> None:
    typer.echo(text)


def _geometry(cfg: StudyConfig, image_size: Optional[int], channels: Optional[int], num_classes: Optional[int],
              patch_size: Optional[int]) -> Geometry:
    given = [image_size, channels, num_classes]
    if all(v is None for v in given):
        return dataset_geometry(cfg.dataset, cfg.patch_size if patch_size is None else patch_size)
    if any(v is None for v in given):
        raise DseError("give all of --image-size, --channels and --num-classes, or none (the space's data set is used)")
    patch_size = 2 if patch_size is None else patch_size
    if image_size <= 0 or channels <= 0 or num_classes <= 0 or patch_size <= 0 or image_size % patch_size:
        raise DseError("--image-size, --channels and --num-classes must be positive, and --patch-size must divide --image-size")
    return Geometry(image_size, channels, num_classes, patch_size)


def _geometry_text(g: Geometry) -> str:
    return f"{g.image_size}x{g.image_size}x{g.channels}, {g.num_classes} classes, patch {g.patch_size}"


@app.command()
def run(
    space: Optional[Path] = SpaceOpt, budget: Optional[str] = BudgetOpt,
    study: Optional[str] = typer.Option(None, "--study", help="Study name [default: the space's name, plus the budget if given]."),
    lower: Optional[float] = LowerOpt, upper: Optional[float] = UpperOpt,
    steps: Optional[int] = typer.Option(None, "--steps", help="Training steps per trial."),
    seeds: Optional[int] = typer.Option(None, "--seeds", help="Train each candidate with N training seeds (0..N-1), one row each, grouped with a confidence interval [space.seeds, else one]."),
    fid_samples: Optional[int] = typer.Option(None, "--fid-samples", help="Generated images for FID/KID/IS [50000]."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu or cuda[:N]."),
    search: Optional[str] = typer.Option(None, "--search", help="grid (every candidate) or optuna (multi-objective TPE) [grid]."),
    num_samples: Optional[int] = typer.Option(None, "--num-samples", help="optuna: trials to run [as many as candidates]."),
    halving: Optional[bool] = typer.Option(None, "--halving/--no-halving", help="Stop trials whose partial (params, latency, loss) is dominated (successive halving)."),
    cpus_per_trial: Optional[float] = typer.Option(None, "--cpus-per-trial", help="CPUs per trial [0: every CPU of a node]."),
    gpus_per_trial: Optional[float] = typer.Option(None, "--gpus-per-trial", help="GPUs per trial, fractions allowed (0.25: four per GPU) [-1: from the model's memory]."),
    address: Optional[str] = typer.Option(None, "--address", help="Join a Ray cluster (HOST:PORT) [$RAY_ADDRESS, else a local Ray]."),
    cohort_size: Optional[int] = typer.Option(None, "--cohort-size", help="Train up to N compatible students (seeds, losses of one architecture) together in one process [0: as GPU memory allows, 1 on CPUs]."),
    compile_model: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="torch.compile each student's training step (CUDA graphs on a GPU) [no]."),
    results_dir: Optional[str] = typer.Option(None, "--results-dir", help="Where studies are stored [results]."),
    reports_dir: Optional[str] = typer.Option(None, "--reports-dir", help="Where reports are written [reports]."),
    assignments: Optional[list[str]] = typer.Option(None, "--set", help="Any key of the space file: SECTION.KEY=VALUE, e.g. --set data.dataset=digits (repeatable)."),
    live: bool = typer.Option(True, "--live/--no-live", help="A live table of trials on a terminal (plain lines otherwise)."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Run trials stored as failed (or stopped) again."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the configuration, the trials, their resources and an estimate of their time; write nothing."),
    max_latency: Optional[str] = MaxLatencyOpt, max_params: Optional[str] = MaxParamsOpt,
    latency_runtime: Optional[str] = RuntimeOpt,
    recheck_latency: Optional[bool] = typer.Option(None, "--recheck-latency/--no-recheck-latency", help="Also time each trained student after training (latency_trained_s) [no]."),
    log_to: Optional[list[str]] = typer.Option(None, "--log-to", help="Also stream each trial's loss curve and final row to tensorboard, mlflow or wandb (repeatable; files under the study's folder) [run.log_to]."),
) -> None:
    """Measure every architecture's latency, then train and measure those inside the constraints, and write the Pareto report.

    Exit code: 0 every trial completed (or was stopped by --halving), 1 some trials failed (the
    summary says which; `dse status NAME` says why), 2 a mistake refused before anything ran,
    130 interrupted (run the same command again to resume)."""
    from dse.study import preflight, run_study

    cfg = study_for_run(
        space, name=study, assignments=assignments,
        space={"budget": budget, "lower": lower, "upper": upper, "seeds": _seeds(seeds), "max_latency": max_latency,
               "max_params": max_params},
        train={"steps": steps, "compile": compile_model},
        eval={"num_samples": fid_samples, "latency_runtime": latency_runtime, "latency_recheck": recheck_latency},
        run={"device": device, "results_dir": results_dir, "reports_dir": reports_dir,
             "retry_failed": retry_failed or None, "search": search, "num_samples": num_samples,
             "halving": halving, "cpus_per_trial": cpus_per_trial, "gpus_per_trial": gpus_per_trial,
             "address": address, "cohort_size": cohort_size, "log_to": log_to or None},
    )
    plan = preflight(cfg)  # planned and checked once, before anything is written (the cluster: when the run connects)
    seeds = len(cfg.space.seeds) or 1
    _echo(f"study {cfg.name}: {len(plan.specs)} trials ({len(plan.candidates)} architectures x "
          f"{len(cfg.trainings()) // seeds} trainings" + (f" x {seeds} seeds" if seeds > 1 else "")
          + f") on {cfg.dataset}, budget {cfg.space.budget}")
    if plan.proposal:
        _echo(f"design rule: {plan.proposal.arch.name} ({plan.proposal.params:,} params)")
    from dse.findings import plan_notes

    for note in plan_notes((t.loss for _, t in cfg.trainings()), plan.geometry.image_size):
        _echo(f"note: {note}")
    from dse.estimate import estimate_study
    from dse.progress import TrialBoard, format_duration, live_table, outcome_summary

    todo = plan.to_run()
    guess = estimate_study(cfg, todo)
    if dry_run:
        _echo_dry_run(cfg, guess, skipped=len(plan.specs) - len(todo))
        return
    if todo:
        _echo(f"estimate: {len(todo)} trials to run, ~{format_duration(guess.study_s)} on this machine "
              f"({guess.parallel} at a time); {guess.pairs_text()}")
        _echo(f"  ({guess.method()})")

    # a trial's length in steps; 0 (unknown) when train.epochs sets it from the pair count
    steps = {s.trial_id: (0 if s.train.epochs else s.train.steps) for s in plan.specs}
    board = TrialBoard([s.trial_id for s in plan.specs], steps, stored=plan.store.completed_ids())
    _echo(f"latency first: {_latency_protocol_text(cfg)}" + _constraints_text(cfg))
    with live_table(board, enabled=live) as on_event:
        outcome = run_study(plan, on_event=on_event, on_pairs=on_event.on_pairs, on_latency=_echo_latency)
    _echo()
    for line in outcome_summary(outcome, elapsed_s=board.elapsed()):
        _echo(line)
    if outcome.num_failed:
        _echo(f"{outcome.num_failed} of {len(plan.specs)} trials failed: `dse status {cfg.name} --results-dir "
              f"{cfg.run.results_dir}` says why, `dse run ... --retry-failed` runs them again")
        raise typer.Exit(EXIT_FAILED_TRIALS)


def _latency_protocol_text(cfg: StudyConfig) -> str:
    e = cfg.eval
    where = e.latency_device_name if e.latency_runtime == "command" else (cfg.run.device if cfg.run.device != "auto" else "this machine")
    return (f"{e.latency_num_images} images at batch {e.latency_batch}, guidance {e.guidance:g}, median of "
            f"{e.latency_repeats}, {e.latency_runtime} on {where}")


def _constraints_text(cfg: StudyConfig) -> str:
    s = cfg.space
    parts = ([f"max_params {s.max_params}"] if s.max_params else []) + ([f"max_latency {s.max_latency}"] if s.max_latency else [])
    return f"; constraints: {', '.join(parts)}" if parts else ""


def _latency_line(a) -> str:
    """One architecture of the latency pass, as `dse run` and `dse latency measure` print it."""
    c = a.columns
    if a.error:
        what = f"FAILED: {a.error}"
    elif not c:
        what = "not measured"
    else:
        spread = c.get("latency_spread")
        what = (f"{c['latency_s']:.4g} s ({c['latency_per_image_ms']:.4g} ms/image"
                + (f", spread {100 * spread:.0f}%" if isinstance(spread, (int, float)) else "") + ")"
                + (" cached" if c.get("latency_cached") else "")
                + (" CONTENDED: not ranked" if c.get("latency_contended") else ""))
    where = "" if a.inside else f"  outside: {a.reason}, not trained"
    return f"{a.arch.name:<14} {a.params:>10,} params  {what}{where}"


def _echo_latency(i: int, n: int, a) -> None:
    _echo(f"  latency [{i}/{n}] {_latency_line(a)}")


def _seeds(n: Optional[int]) -> Optional[list[int]]:
    """`--seeds N` as the training seeds 0..N-1 (None: not given); N must be 1..32."""
    if n is None:
        return None
    from dse.config import MAX_SEEDS

    if not 1 <= n <= MAX_SEEDS:
        raise DseError(f"--seeds {n}: give a number of training seeds from 1 to {MAX_SEEDS}")
    return list(range(n))


def _echo_dry_run(cfg: StudyConfig, guess, skipped: int) -> None:
    """What `dse run` would do: the resolved configuration, each trial with its resources and time, the total."""
    from dse.progress import format_duration

    _echo("configuration (resolved):")
    for section, values in json.loads(cfg.to_json()).items():
        _echo(f"  [{section}]")
        for key, value in values.items():
            _echo(f"    {key} = {json.dumps(value)}")
    if skipped:
        _echo(f"{skipped} trials are already in the store: not run again")
    if not guess.trials:
        _echo("nothing to run")
    else:
        _echo(f"{'trial':<40} {'params':>10} {'cpus':>5} {'gpus':>5} {'train':>8} {'eval':>8} {'latency':>8}")
        for t in guess.trials:
            _echo(f"{t.trial_id:<40} {t.params:>10,} {t.cpus:>5g} {t.gpus:>5g} {format_duration(t.train_s):>8} "
                  f"{format_duration(t.eval_s):>8} {format_duration(t.latency_s):>8}")
        where = f"this machine (a cluster at {cfg.run.address} may differ)" if cfg.run.address else "this machine"
        _echo(f"estimate: the study ~{format_duration(guess.study_s)} on {where}, {guess.parallel} trial(s) at a time; "
              f"{guess.pairs_text()}")
        _echo(f"  ({guess.method()})")
    _echo("dry run: nothing was written")


@latency_app.command("measure")
def latency_measure(
    space: Optional[Path] = SpaceOpt, budget: Optional[str] = BudgetOpt,
    max_latency: Optional[str] = MaxLatencyOpt, max_params: Optional[str] = MaxParamsOpt,
    latency_runtime: Optional[str] = RuntimeOpt,
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu or cuda[:N]."),
    results_dir: Optional[str] = typer.Option(None, "--results-dir", help="Where studies and the latency cache are [results]."),
    assignments: Optional[list[str]] = typer.Option(None, "--set", help="Any key of the space file: SECTION.KEY=VALUE, e.g. --set eval.latency_batch=64 (repeatable)."),
    json_out: bool = JsonOpt,
) -> None:
    """Measure the latency of every candidate of a space, as `dse run` does before training, into the
    latency cache; say which are inside the constraints. Trains nothing."""
    from dse.study import measure_latencies

    cfg = study_for_run(
        space, assignments=assignments, space={"budget": budget, "max_latency": max_latency, "max_params": max_params},
        eval={"latency_runtime": latency_runtime}, run={"device": device, "results_dir": results_dir},
    )
    if not json_out:
        _echo(f"latency of {cfg.name}'s candidates: {_latency_protocol_text(cfg)}" + _constraints_text(cfg))
    result = measure_latencies(cfg, on_latency=None if json_out else _echo_latency)
    if json_out:
        _echo(json.dumps([a.to_dict() for a in result], indent=2, default=str))
        return
    inside = sum(a.inside for a in result)
    _echo(f"{inside} of {len(result)} architectures inside the constraints; cache: "
          f"{Path(cfg.run.results_dir) / 'latency_cache'}")


@latency_app.command("list")
def latency_list(
    results_dir: str = typer.Option("results", "--results-dir", help="Where studies and the latency cache are."),
    json_out: bool = JsonOpt,
) -> None:
    """The latencies in the cache: architecture, protocol, device, median and spread."""
    from dse.latency_cache import LatencyCache

    entries = LatencyCache.of_results(results_dir).entries()
    if json_out:
        _echo(json.dumps(entries, indent=2, default=str))
        return
    if not entries:
        _echo(f"the latency cache in {results_dir} is empty")
        return
    _echo(f"{'architecture':<14} {'geometry':<10} {'runtime':<12} {'device':<28} {'images':>7} {'batch':>5} "
          f"{'threads':>7} {'latency s':>10} {'ms/image':>9} {'spread':>7}  measured")
    for e in entries:
        a, g, p, r, f = e["arch"], e["geometry"], e["protocol"], e["result"], e["fingerprint"]
        name = f"d{a.get('depth')}-w{a.get('width')}-h{a.get('heads')}"
        geo = f"{g.get('image_size')}x{g.get('image_size')}x{g.get('channels')}"
        spread = r.get("latency_spread")
        _echo(f"{name:<14} {geo:<10} {str(p.get('runtime')):<12} {str(r.get('latency_device'))[:28]:<28} "
              f"{r.get('latency_num_images', 0):>7} {r.get('latency_batch', 0):>5} {str(f.get('threads', '-')):>7} "
              f"{r['latency_s']:>10.4g} {r.get('latency_per_image_ms', float('nan')):>9.4g} "
              f"{(f'{100 * spread:.0f}%' if isinstance(spread, (int, float)) else '-'):>7}  {e.get('measured_at')}")


@latency_app.command("clear")
def latency_clear(
    results_dir: str = typer.Option("results", "--results-dir", help="Where studies and the latency cache are."),
) -> None:
    """Remove every latency in the cache: the next study measures its candidates again."""
    from dse.latency_cache import LatencyCache

    cache = LatencyCache.of_results(results_dir)
    _echo(f"removed {cache.clear()} latencies from {cache.root}")


@app.command("space")
def space_cmd(
    space: Optional[Path] = SpaceOpt, budget: Optional[str] = BudgetOpt, lower: Optional[float] = LowerOpt,
    upper: Optional[float] = UpperOpt, image_size: Optional[int] = ImageSizeOpt, channels: Optional[int] = ChannelsOpt,
    num_classes: Optional[int] = ClassesOpt, patch_size: Optional[int] = PatchOpt, json_out: bool = JsonOpt,
) -> None:
    """List the architectures that fit a budget, with their parameter counts (one row per depth and
    width, with every head count of it: heads do not change the count)."""
    from dse.sizing import candidate_table

    cfg = study_for_sizing(space, own_geometry=image_size is not None, budget=budget, lower=lower, upper=upper)
    geometry = _geometry(cfg, image_size, channels, num_classes, patch_size)
    table = candidate_table(cfg.space, geometry)
    s, rows, rule = cfg.space, table.rows(), table.rule.arch if table.rule else None
    if json_out:
        _echo(json.dumps({"budget": s.budget, "geometry": geometry.__dict__, "lower": s.lower, "upper": s.upper,
                          "candidates": rows}, indent=2))
        return
    groups = table.groups()
    _echo(f"{len(rows)} architectures ({len(groups)} depth x width) for {_geometry_text(geometry)} at budget "
          f"{s.budget} (band {s.lower:g}x-{s.upper:g}x)")
    heads = [",".join(map(str, g["heads"])) for g in groups]
    column = max([5, *map(len, heads)])
    _echo(f"{'depth':>5} {'width':>5} {'heads':>{column}} {'params':>12}")
    for g, h in zip(groups, heads):
        mark = f"  <- design rule (heads {rule.heads})" if rule and (g["depth"], g["width"]) == (rule.depth, rule.width) else ""
        _echo(f"{g['depth']:>5} {g['width']:>5} {h:>{column}} {g['params']:>12,}{mark}")


@app.command("propose")
def propose_cmd(
    budget: Optional[str] = BudgetOpt, space: Optional[Path] = SpaceOpt, lower: Optional[float] = LowerOpt,
    upper: Optional[float] = UpperOpt, image_size: Optional[int] = ImageSizeOpt, channels: Optional[int] = ChannelsOpt,
    num_classes: Optional[int] = ClassesOpt, patch_size: Optional[int] = PatchOpt, json_out: bool = JsonOpt,
) -> None:
    """The paper's design-rule architecture for a budget: d = floor(log2 w), h = lower median divisor of w."""
    from dse.sizing import propose

    cfg = study_for_sizing(space, budget=budget, lower=lower, upper=upper)
    geometry = _geometry(cfg, image_size, channels, num_classes, patch_size)
    c = propose(cfg.space.budget_params, geometry, lower=cfg.space.lower, upper=cfg.space.upper)
    if json_out:
        _echo(json.dumps({"budget": cfg.space.budget, "geometry": geometry.__dict__, **c.to_dict()}))
    else:
        _echo(f"{c.arch.name}: depth {c.arch.depth}, width {c.arch.width}, heads {c.arch.heads}, "
              f"{c.params:,} params ({_geometry_text(geometry)}, budget {cfg.space.budget})")


@app.command("report")
def report_cmd(
    study: str = typer.Argument("demo", help="Study name (a directory under --results-dir)."),
    results_dir: str = typer.Option("results", "--results-dir"), reports_dir: str = typer.Option("reports", "--reports-dir"),
) -> None:
    """Render the Pareto report of the study in the folder --results-dir/STUDY as --reports-dir/STUDY.html."""
    from dse.study import report_study

    _echo(f"report: {report_study(study, results_dir, reports_dir)}")


@app.command("findings")
def findings_cmd(
    study: str = typer.Argument("demo", help="Study name (a directory under --results-dir)."),
    results_dir: str = typer.Option("results", "--results-dir", help="Where studies are stored."),
    as_json: bool = JsonOpt,
) -> None:
    """Check the paper's design principles on a study's results: for each one its data can speak to,
    "holds", "does not hold" or "cannot tell (tied)", with the numbers, intervals and the paper's figures."""
    from dse.findings import format_findings, study_findings

    found = study_findings(study, results_dir)
    if as_json:
        _echo(json.dumps([f.to_dict() for f in found], default=str))
        return
    typer.echo(format_findings(found), nl=False)


DataRootOpt = typer.Option(None, "--data-root", help="Data set location (a folder, or an .npz for cifar10) [$DSE_DATA or ~/.cache/dse/data].")


@app.command("eval")
def eval_cmd(
    checkpoint: Path = typer.Argument(..., help="A trained student: a trial's artifacts/<trial>/student.pt or student.safetensors, or that folder."),
    num_samples: Optional[int] = typer.Option(None, "--num-samples", help="Generated images for FID/KID/IS [50000]."),
    latency_images: Optional[int] = typer.Option(None, "--latency-images", help="Images timed per latency run [50000]."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Reference data set [the one the checkpoint names]."),
    data_root: Optional[str] = DataRootOpt,
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda[:N]."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for samples.png and student.onnx [none: no file is written]."),
    assignments: Optional[list[str]] = typer.Option(None, "--set", help="Any [eval] key: eval.KEY=VALUE, e.g. --set eval.reference=test (repeatable)."),
    as_json: bool = JsonOpt,
) -> None:
    """Measure one trained student (FID/KID/IS, latency, ONNX, sample grid) and print its row."""
    from dse.config import eval_from_dict
    from dse.evaluation import evaluate_checkpoint

    values: dict = {}
    for section, items in parse_assignments(assignments or []).items():
        if section != "eval":
            raise DseError(f"dse eval takes only eval.KEY=VALUE settings (got {section}.*)")
        values.update(items)
    values.update({k: v for k, v in (("num_samples", num_samples), ("latency_num_images", latency_images)) if v is not None})
    cfg = eval_from_dict(values)
    row = evaluate_checkpoint(checkpoint, cfg, device=device, dataset=dataset or "", data_root=data_root or "", out_dir=out)
    if as_json:
        _echo(json.dumps(row, default=str))
        return
    for key, value in row.items():
        _echo(f"{key:<26} {format(value, '.6g') if isinstance(value, float) else value}")


@app.command("export")
def export_cmd(
    checkpoint: Path = typer.Argument(..., help="A trained student: a trial's artifacts/<trial>/student.pt or student.safetensors, or that folder."),
    out: Path = typer.Option(..., "--out", "-o", help="The ONNX file to write (--format onnx), or a new folder (--format diffusers)."),
    guidance: Optional[float] = typer.Option(None, "--guidance", help="onnx: classifier-free guidance scale, folded into the graph [1.5]."),
    fmt: str = typer.Option("onnx", "--format", help="onnx (one graph, guidance folded in) or diffusers (a DiTTransformer2DModel save_pretrained folder)."),
) -> None:
    """Write a trained student as one ONNX graph (noise z, label y) -> guided image, or as a diffusers
    DiTTransformer2DModel folder; either is checked against PyTorch."""
    if fmt not in ("onnx", "diffusers"):
        raise DseError(f"--format must be onnx or diffusers (got {fmt!r})")
    if fmt == "diffusers":
        if guidance is not None:
            raise DseError("--guidance is for --format onnx; a diffusers model takes the guidance when it is run (docs/formats.md)")
        from dse.export_diffusers import export_diffusers

        info = export_diffusers(checkpoint, out)
        _echo(f"wrote {info['out']}/ ({', '.join(info['files'])}; {info['bytes']:,} bytes): diffusers DiTTransformer2DModel "
              f"with {info['diffusers_params']:,} parameters (the student's {info['params']:,}, its embedders copied into "
              f"every block); max |diffusers - dse| = {info['max_abs_diff']:.2e}")
        return
    from dse.evaluation import export_student

    info = export_student(checkpoint, out, guidance=1.5 if guidance is None else guidance)
    _echo(f"wrote {info['onnx_path']} ({info['onnx_bytes']:,} bytes, opset {info['onnx_opset']}); inputs z {info['z_shape']} "
          f"float32 and y (B,) int64; max |onnxruntime - PyTorch| = {info['onnx_max_abs_diff']:.2e}")


FormatOpt = typer.Option("table", "--format", help="table, csv or json.")
ResultsDirOpt = typer.Option("results", "--results-dir", help="Where studies are stored.")


@app.command("query")
def query_cmd(
    sql: str = typer.Argument(..., help="One SELECT over the views `trials` (every row of every study), `points` (one row per candidate: its seeds grouped, FID mean and 95% interval) and `pareto` (the rows of each study's noise-aware front: front and tied points)."),
    results_dir: str = ResultsDirOpt,
    study: Optional[str] = typer.Option(None, "--study", help="Only this study's rows."),
    fmt: str = FormatOpt,
) -> None:
    """Answer SQL over the results stores (DuckDB), e.g.
    "SELECT trial_id, fid FROM trials WHERE latency_per_image_ms < 2 ORDER BY fid LIMIT 1"."""
    from dse.query import format_table, query

    typer.echo(format_table(query(sql, results_dir, study), fmt), nl=False)


@app.command("results")
def results_cmd(
    study: Optional[str] = typer.Argument(None, help="Study name [the only study, if there is one]."),
    results_dir: str = ResultsDirOpt,
    fmt: str = FormatOpt,
    columns: Optional[str] = typer.Option(None, "--columns", help="Comma-separated columns, or * for all [a short selection]."),
) -> None:
    """Print a study's rows as a table, CSV or JSON."""
    from dse.layout import study_names
    from dse.query import format_table, study_results

    if study is None:
        known = study_names(results_dir)
        if len(known) != 1:
            raise DseError(f"name a study: {', '.join(known)}" if known else f"no studies in {results_dir}/ yet (run `dse run`)")
        study = known[0]
    cols = [c.strip() for c in columns.split(",") if c.strip()] if columns else None
    typer.echo(format_table(study_results(study, results_dir, cols), fmt), nl=False)


@app.command("status")
def status_cmd(
    study: Optional[str] = typer.Argument(None, help="Study name (none: every study, one line each)."),
    results_dir: str = ResultsDirOpt, as_json: bool = JsonOpt,
) -> None:
    """Where a study stands: trials done, running (and where), failed (and why), stopped, pending."""
    from dse.study import studies_status, study_status

    found = study_status(study, results_dir) if study else studies_status(results_dir)
    if as_json:
        _echo(json.dumps(found, indent=2, default=str))
    elif study:
        _echo(_status_text(found))
    elif not found:
        _echo(f"no studies in {results_dir}/ yet (run `dse run`)")
    else:
        for s in found:
            _echo(f"{s['study']:<28} {'error: ' + s['error'] if 'error' in s else _counts_text(s)}")


def _counts_text(s: dict) -> str:
    c = s["counts"]
    return (f"{c['done']}/{s['total']} done, {c['running']} running, {c[FAILED]} failed, {c[STOPPED]} stopped, "
            f"{c['pending']} pending" + (f", {c['outside']} outside the constraints" if c.get("outside") else ""))


def _status_text(s: dict, most: int = 15) -> str:
    """One screen: the counts, then each running and failed trial (at most `most` of each)."""
    lines = [f"study {s['study']} ({s['dataset']}, budget {s['budget']}): {_counts_text(s)}"]
    if s["resumable"]:
        lines.append(f"{len(s['resumable'])} pending with a checkpoint: `dse run` resumes them")
    for kind, items, text in (
        ("running", s["running"], lambda r: f"{r['trial_id']:<34} on {r['host']} pid {r['pid']} since {r['started_at']}"),
        (FAILED, s[FAILED], lambda r: f"{r['trial_id']:<34} {(r['error'].splitlines() or [''])[0][:100]}"),
    ):
        if items:
            lines.append(f"{kind}:")
            lines += [f"  {text(r)}" for r in items[:most]]
            if len(items) > most:
                lines.append(f"  ... and {len(items) - most} more (--json lists all)")
    if s[FAILED]:
        lines.append("`dse run --retry-failed` runs the failed ones again")
    return "\n".join(lines)


@app.command("assets")
def assets_cmd(as_json: bool = JsonOpt) -> None:
    """List the pretrained weights dse uses (Inception for FID, LPIPS trunks, ...): found where, or how to get them."""
    from dse.assets.status import describe_assets

    found = describe_assets()
    if as_json:
        _echo(json.dumps([dataclasses.asdict(a) for a in found], default=str))
        return
    for a in found:
        _echo(f"{'found  ' if a.found else 'MISSING'} {a.name}: {a.where}")
        if not a.found:
            _echo(f"        get it: {a.how_to_get}")


@contextlib.contextmanager
def _progress_bar(description: str, total: int | None, unit: str = "pairs"):
    """A rich progress bar; yields update(done, total, rate, info): the rate is shown in `unit`/s,
    `info` (e.g. the loss) after it."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[info]}"), TimeRemainingColumn()]
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task(description, total=total, info="")

        def update(done: int, total: int | None = None, rate: float | None = None, info: str = "") -> None:
            text = " ".join(t for t in (f"{rate:,.0f} {unit}/s" if rate else "", info) if t)
            bar.update(task, completed=done, total=total, info=text)

        yield update


# `dse teacher generate` makes pairs as a study would: the [teacher] section's defaults are its own.
_TEACHER = TeacherConfig()


@teacher_app.command("generate")
def teacher_generate(
    out: Path = typer.Option(..., "--out", help="Pair-store directory (resumes if it exists)."),
    dataset: str = typer.Option("digits", "--dataset", help="digits, fashion-mnist or cifar10."),
    teacher: str = typer.Option("empirical", "--teacher", help="empirical, trained, external or diffusers."),
    source: str = typer.Option("", "--source", help="trained: checkpoint; external: TorchScript file or module:function; diffusers: a save_pretrained folder (safetensors)."),
    data_root: Optional[str] = DataRootOpt,
    num: int = typer.Option(_TEACHER.num_pairs, "--num", help="Number of pairs."),
    seed: int = typer.Option(_TEACHER.seed, "--seed"),
    num_steps: int = typer.Option(_TEACHER.num_steps, "--steps", help="Heun steps (NFE = 2 x steps - 1)."),
    batch_size: int = typer.Option(512, "--batch-size"), shard_size: int = typer.Option(_TEACHER.shard_size, "--shard-size"),
    image_dtype: str = typer.Option(_TEACHER.image_dtype, "--image-dtype", help="float32 or float16."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda[:N]."),
) -> None:
    """Sample (noise, label, image) pairs from a teacher with EDM's Heun sampler."""
    from dse.teacher.generate import generate_pairs
    from dse.teacher.edm import SamplerSettings
    from dse.device import resolve_device

    if num <= 0 or num_steps <= 0 or batch_size <= 0 or shard_size <= 0:
        raise DseError("--num, --steps, --batch-size and --shard-size must be positive")
    with _progress_bar(f"{teacher} teacher on {dataset}", num) as update:
        path = generate_pairs(
            out, dataset=dataset, teacher=teacher, source=source, data_root=data_root, num_pairs=num, seed=seed,
            settings=SamplerSettings(num_steps=num_steps), shard_size=shard_size, batch_size=batch_size,
            image_dtype=image_dtype, device=str(resolve_device(device)), progress=update,
        )
    _echo(f"pairs: {path}")


@teacher_app.command("train")
def teacher_train(
    out: Path = typer.Option(..., "--out", help="Checkpoint folder (resumes from its last.pt if there is one)."),
    dataset: str = typer.Option("digits", "--dataset", help="digits, fashion-mnist or cifar10."),
    data_root: Optional[str] = DataRootOpt,
    steps: Optional[int] = typer.Option(None, "--steps", help="Training steps [3000]."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="[128]"),
    lr: Optional[float] = typer.Option(None, "--lr", help="[2e-3]"),
    depth: Optional[int] = typer.Option(None, "--depth", help="DiT depth [4]."),
    width: Optional[int] = typer.Option(None, "--width", help="DiT width [96]."),
    heads: Optional[int] = typer.Option(None, "--heads", help="DiT heads [4]."),
    seed: Optional[int] = typer.Option(None, "--seed", help="[0]"),
    checkpoint_every: Optional[int] = typer.Option(None, "--checkpoint-every", help="[500]"),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda[:N]."),
) -> None:
    """Train a small EDM-preconditioned denoiser on a data set, for use as `--teacher trained`."""
    from dse.teacher.train import TeacherTrainConfig, train_teacher
    from dse.device import resolve_device

    given = {"steps": steps, "batch_size": batch_size, "lr": lr, "depth": depth, "width": width, "heads": heads,
             "seed": seed, "checkpoint_every": checkpoint_every}
    cfg = TeacherTrainConfig(dataset=dataset, data_root=data_root, **{k: v for k, v in given.items() if v is not None})
    with _progress_bar(f"EDM teacher on {dataset}", cfg.steps, unit="steps") as update:
        path = train_teacher(cfg, out, device=str(resolve_device(device)),
                             progress=lambda step, total, loss: update(step, total, info=f"loss {loss:.4f}"))
    _echo(f"teacher: {path}")


@teacher_app.command("import-get")
def teacher_import_get(
    src: Path = typer.Argument(..., help="GET's data folder, holding latent/*.pkl and image/*.pkl."),
    out: Path = typer.Option(..., "--out", help="Pair-store directory to create (resumes if it exists)."),
    image_dtype: str = typer.Option("float32", "--image-dtype", help="float32 or float16."),
) -> None:
    """Import GET's published teacher pairs (read weights-only: no code in the files runs)."""
    from dse.data.pairs import import_get

    with _progress_bar("importing GET pairs", None) as update:
        path = import_get(src, out, image_dtype=image_dtype, progress=update)
    _echo(f"pairs: {path}")


@teacher_app.command("convert")
def teacher_convert(
    source: str = typer.Argument(..., help="The teacher as code: package.module:function (or a TorchScript file), as --teacher external takes."),
    out: Path = typer.Option(..., "--out", help="New (or empty) folder for the converted teacher."),
    dataset: str = typer.Option("digits", "--dataset", help="The data set the teacher makes images of: digits, fashion-mnist or cifar10."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda[:N]."),
) -> None:
    """Convert a teacher given as code, once, into safetensors + JSON that dse loads without running code
    (a diffusers model with its scheduler, or dse's own EDM teacher; anything else is refused)."""
    from dse.device import resolve_device
    from dse.teacher.convert import convert_teacher

    done = convert_teacher(source, out, dataset=dataset, device=str(resolve_device(device)))
    _echo(f"converted {done.found} to {done.out} (largest difference from the source: {done.max_abs_diff:.2g})")
    _echo(f"use it: dse teacher generate --teacher {done.kind} --source {done.out} --dataset {dataset}")


@teacher_app.command("inspect")
def teacher_inspect(
    store: Path = typer.Argument(..., help="Pair-store directory."),
    png: Optional[Path] = typer.Option(None, "--png", help="Where to write the grid [DIR/inspect.png]."),
    per_class: int = typer.Option(8, "--per-class", help="Pairs shown per class."),
    json_out: bool = JsonOpt,
) -> None:
    """Counts, shapes, value ranges, label histogram and a PNG grid of noise and images per class."""
    from dse.data.pairs import PairStore, inspect_grid, summarize

    pairs = PairStore.open(store)
    summary = summarize(pairs)
    summary["png"] = str(inspect_grid(pairs, png or store / "inspect.png", per_class))
    if json_out:
        _echo(json.dumps(summary, indent=2))
        return
    _echo(f"{summary['num_pairs']:,} pairs in {summary['num_shards']} shards at {summary['path']}")
    _echo(f"data set {summary['dataset']}, teacher {summary['teacher']}, seed {summary['seed']}")
    _echo(f"sampler {summary['sampler']}")
    _echo(f"z {summary['shapes']['z']} float32, x {summary['shapes']['x']} {summary['image_dtype']}")
    for key in ("z", "x"):
        d = summary[key]
        _echo(f"  {key}: min {d['min']:.3f} max {d['max']:.3f} mean {d['mean']:.3f} std {d['std']:.3f}")
    counts = summary["label_counts"]
    _echo("labels: " + "  ".join(f"{c}:{n}" for c, n in enumerate(counts)))
    _echo(f"grid: {summary['png']}")


EXIT_FAILED_TRIALS = 1  # the study ran, some trials failed
EXIT_REFUSED = 2  # a mistake refused before running (DseError, a usage error, an OS failure)
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT, as shells report it)


def os_error_text(exc: OSError) -> str:
    """An OS failure on one line: its cause and the path(s) it happened on."""
    cause = exc.strerror or str(exc) or type(exc).__name__
    paths = [str(p) for p in (exc.filename, exc.filename2) if p is not None]
    return f"{cause}: {' -> '.join(paths)}" if paths else cause


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `dse` console script, and the one guard around every command: a mistake
    (DseError) or an OS failure (disk full, read-only, not a folder, ...) is one line on stderr and
    exit 2; Ctrl-C is one line and exit 130; any other exception is a bug and keeps its traceback."""
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        app(args=args, prog_name="dse")  # click: usage errors exit 2 with its own text; Ctrl-C exits 130
    except DseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_REFUSED)
    except OSError as exc:
        print(f"error: {os_error_text(exc)}", file=sys.stderr)
        sys.exit(EXIT_REFUSED)
    except SystemExit as exc:
        if exc.code == EXIT_INTERRUPTED:  # typer turns KeyboardInterrupt into this exit, silently
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C does not cut the clean-up short (Ray's)
            again = f"`{shlex.join(['dse', *args])}` again to resume" if args[:1] == ["run"] else "the command again"
            print(f"interrupted: run {again}", file=sys.stderr)
        raise
