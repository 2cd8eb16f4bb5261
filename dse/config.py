"""Owns the study configuration: frozen dataclasses, TOML loading, the budget parsed once, the names
a study may use, validation of every key, and the study a command's options describe (no torch, no ray).

A search-space file (`search_spaces/*.toml`) has the sections `[study]`, `[data]`, `[teacher]`,
`[space]`, `[train]`, `[eval]` and `[run]`; every key is optional except `space.budget`, and an
unknown section or key is an error (a typo must not silently fall back to a default). Every value
is checked against its field's type (a float field takes an integer, an integer field an integral
float such as 1e3, a bool is never a number) and every number against its range in `RANGES`
(floats must be finite); a mistake is one DseError naming the key.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
import sys
import tomllib
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, get_args, get_origin, get_type_hints

from dse.cohorts import DEFAULT_COHORT, MAX_COHORT  # noqa: F401  (DEFAULT_COHORT: RunConfig's doc)
from dse.device import check_device_name
from dse.errors import DseError
from dse.layout import PAIRS_DIR, check_name
from dse.types import Geometry, StudentArch  # noqa: F401  (re-exported: the value types every section uses)


# The geometry of each data set dse knows (dse.data.datasets registers a loader under each name),
# known without loading it: what `[data] dataset` may name and what `patch_size` must divide.
GEOMETRIES: dict[str, Geometry] = {
    "digits": Geometry(image_size=8, channels=1, num_classes=10),
    "fashion-mnist": Geometry(image_size=28, channels=1, num_classes=10),
    "cifar10": Geometry(image_size=32, channels=3, num_classes=10),
}


def dataset_geometry(name: str, patch_size: int = 2) -> Geometry:
    """The geometry of data set `name` cut into `patch_size` patches; a DseError for an unknown name
    or a patch size that does not divide the image (naming the ones that do)."""
    if name not in GEOMETRIES:
        raise DseError(f"unknown data set {name!r}; known: {', '.join(sorted(GEOMETRIES))}")
    g = GEOMETRIES[name]
    if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 1 or g.image_size % patch_size:
        fits = [p for p in range(1, g.image_size + 1) if g.image_size % p == 0]
        raise DseError(f"data.patch_size {patch_size!r} does not divide the {g.image_size}x{g.image_size} images of "
                       f"{name}; use one of {', '.join(map(str, fits))}")
    return Geometry(g.image_size, g.channels, g.num_classes, patch_size)


@dataclass(frozen=True)
class TeacherConfig:
    """How the offline (noise z, label y, image x) pairs are made: teacher, EDM sampler settings."""

    kind: str = "empirical"  # TEACHER_KINDS: empirical | trained | external | diffusers | store (use the pairs at pairs_dir as they are)
    source: str = ""  # trained: checkpoint path; external: TorchScript file or module:function; diffusers: save_pretrained folder
    num_pairs: int = 4096
    pairs_dir: str = ""  # default: results/pairs/<dataset>-<kind>-<num_pairs>
    seed: int = 0
    num_steps: int = 18
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    shard_size: int = 65536
    image_dtype: str = "float32"  # or "float16": half the disk for a million 32x32x3 pairs


DEPTH_CHOICES = ("all", "closest")  # SpaceConfig.depths
MAX_SEEDS = 32  # SpaceConfig.seeds: training seeds per candidate x training, at most


@dataclass(frozen=True)
class SpaceConfig:
    """Which student architectures a study explores.

    `widths`: empty means {2^n, 3*2^n} from `min_width` to `max_width`; `heads` is "all" (every
    divisor of the width), "rule" (the design rule's heads only) or a list of head counts; `depths`
    is "all" (every depth of the band) or "closest" (per width, the one depth whose count is
    closest to the budget, as the paper's Table 2 lists one model per width).
    """

    budget: str = ""
    lower: float = 0.8
    upper: float = 1.02
    widths: tuple[int, ...] = ()
    min_width: int = 8
    max_width: int = 1024
    min_depth: int = 1
    max_depth: int = 64
    heads: str | tuple[int, ...] = "all"
    depths: str = "all"
    mlp_ratio: float = 4.0
    setups: tuple[str, ...] = ("get",)
    losses: tuple[str, ...] = ("l2",)
    # training seeds: each candidate x training is trained once per seed (one row each), train.seed replaced;
    # empty: train.seed only
    seeds: tuple[int, ...] = ()
    # an explicit list of [depth, width, heads]: these architectures instead of widths x depths x heads
    # (the paper's Table 6); each must fit under upper * budget (the band's lower end does not apply)
    architectures: tuple[tuple[int, ...], ...] = ()
    # constraints, applied after the latency pass and before training (candidates outside are never trained):
    # max_params a count like budget ("150k"); max_latency a time with its unit, per image ("2ms") or per
    # N images ("30s/50000", "1.2s/10k"); "" = none
    max_params: str = ""
    max_latency: str = ""

    @functools.cached_property
    def budget_params(self) -> int:
        """`budget` as a number of parameters: parsed once (by `validate`, for a loaded study; on first
        use, for a SpaceConfig built by hand) and kept; a DseError for a budget that is no count."""
        return parse_budget(self.budget)

    @functools.cached_property
    def max_params_count(self) -> int | None:
        """`max_params` as a number of parameters, or None when there is no such constraint."""
        return parse_budget(self.max_params, what="max_params") if self.max_params else None

    @functools.cached_property
    def max_latency_per_image_s(self) -> float | None:
        """`max_latency` as seconds per image (`parse_latency`), or None when there is no such constraint."""
        if not self.max_latency:
            return None
        seconds, images = parse_latency(self.max_latency)
        return seconds / images


@dataclass(frozen=True)
class TrainConfig:
    """One distillation run: AdamW, EMA, a fixed number of steps (paper App. C defaults)."""

    setup: str = "get"
    loss: str = "l2"
    steps: int = 1000
    epochs: float = 0.0  # if > 0, the length in passes over the pairs instead of `steps` (paper: 100)
    batch_size: int = 256
    lr: float = 1e-4
    weight_decay: float = 0.01
    ema_decay: float = 0.9999
    label_dropout: float = 0.1
    seed: int = 0
    checkpoint_every: int = 0  # steps between checkpoints of a trial (0: only at the end)
    lpips_net: str = "alex"  # or "vgg"
    lpips_size: int = 224  # images are resized bilinearly to this before LPIPS, as GET does; 0: no resize
    compile: bool = False  # torch.compile the student's forward (CUDA graphs on a GPU); bench/gpu.py measures it
    # MI1 (paper App. B.3): student blocks (from 1) and their times (fraction of noise left; 0 = image)
    mi1_blocks: tuple[int, ...] = ()
    mi1_times: tuple[float, ...] = ()
    mi1_sigma_min: float = 0.02
    mi1_sigma_max: float = 80.0
    mi1_rho: float = 7.0
    # TA (paper App. B.2): the teaching assistant DiT, trained first with GET for ta_steps (or
    # loaded from ta_checkpoint, a trial checkpoint `last.pt` of the same code), and the lambdas of
    # lambda0 L(x, x_hat) + lambda1 L(x_TA, x_hat) + lambda2 L_feat; ta_feature_loss "lpips" (LPIPS
    # on both penultimate blocks decoded by the TA's final layer) or "mse" (on the raw features)
    ta_depth: int = 12
    ta_width: int = 384
    ta_heads: int = 12
    ta_steps: int = 1000
    ta_checkpoint: str = ""
    ta_lambda0: float = 1.0
    ta_lambda1: float = 1.0
    ta_lambda2: float = 0.0
    ta_feature_loss: str = "lpips"
    # DMD (Yin et al. 2024): regression_weight L(x, x_hat) + weight * distribution matching; the
    # fake score is a small EDM denoiser DiT trained alongside with lr dmd_fake_lr; the real score is
    # the teacher named in the pair store (dmd_teacher_data_root: its data set's folder, if needed)
    dmd_weight: float = 1.0
    dmd_regression_weight: float = 1.0
    dmd_fake_lr: float = 1e-4
    dmd_fake_depth: int = 2
    dmd_fake_width: int = 64
    dmd_fake_heads: int = 4
    dmd_teacher_data_root: str = ""


@dataclass(frozen=True)
class EvalConfig:
    """How a trained student is measured (docs/metrics.md): image quality, latency, ONNX, samples.

    The defaults follow the paper: FID on 50k samples with random uniform labels and guidance 1.5,
    latency for 50k images at batch 128 with guidance.
    """

    num_samples: int = 50000  # generated images for FID / KID / IS
    guidance: float = 1.5
    reference: str = "train"  # the data set split FID is measured against (EDM: train; GET: test)
    reference_num: int = 0  # images of that split (0: all of it; fewer: a fixed seeded subset)
    extractor: str = "auto"  # auto | inception-v3-compat | inception-v3-fid-helper | dse-digits-classifier-v1
    inception_weights: str = ""  # an explicit Inception weights file (else $DSE_INCEPTION_WEIGHTS, caches, ...)
    latency_num_images: int = 50000
    latency_batch: int = 128
    latency_repeats: int = 3
    latency_compile: bool = False  # torch.compile the student before timing it
    onnx: bool = True  # also export to ONNX and time it with onnxruntime on CPU
    onnx_num_images: int = 0  # images for the onnxruntime timing (0: latency_num_images)
    samples_per_class: int = 10  # columns of the PNG sample grid (one row per class; 0: no grid)
    seed: int = 0
    fid_bootstrap: int = 100  # resamplings of the generated samples' features for fid_std / fid_ci_* (0: none)
    # where latency is measured (docs/metrics.md): torch (eager; torch.compile with latency_compile),
    # onnxruntime (CPU, or CUDA's execution provider on a CUDA device), or command (a user's command
    # template run on the exported ONNX graph, e.g. on a Jetson over ssh; it prints JSON or seconds)
    latency_runtime: str = "torch"
    latency_command: str = ""  # the template, with {onnx}, {batch}, {num_images}, ... (COMMAND_FIELDS)
    latency_device_name: str = ""  # the device the command measures on, as rows and the cache name it
    latency_timeout: float = 600.0  # seconds one run of the command may take
    latency_recheck: bool = False  # also measure each trained student after training (latency_trained_s)


@dataclass(frozen=True)
class RunConfig:
    """Where and how trials run (docs/running.md).

    `cpus_per_trial = 0` gives each trial every CPU of a node; `gpus_per_trial = -1` chooses the GPU
    share from the candidate's estimated peak memory (0 when there is no GPU); a fraction such as
    0.25 packs four trials on one GPU. `search` is "grid" (every candidate) or "optuna"
    (multi-objective TPE over (fid, params, latency), `num_samples` trials); `halving` stops trials
    whose partial (params, latency, loss) is dominated (successive halving on the non-dominated rank).
    `latency_cache` reuses latencies this device measured before (docs/metrics.md).
    """

    results_dir: str = "results"
    reports_dir: str = "reports"
    cpus_per_trial: float = 0.0
    gpus_per_trial: float = -1.0
    device: str = "auto"
    address: str = ""
    search: str = "grid"
    num_samples: int = 0  # optuna: trials to sample (0: as many as there are candidates)
    halving: bool = False
    halving_rungs: int = 3  # rungs at 1/eta^(k-1), ..., 1/eta, 1 of the training steps
    halving_eta: int = 3  # at each rung, keep the best 1/eta by non-dominated rank
    retry_failed: bool = False  # run trials stored as failed again
    latency_cache: bool = True  # reuse latencies measured before on this device (results_dir/latency_cache)
    # students trained together in one process as one batched model (dse.cohorts): 0 chooses (on GPUs, as
    # many as the memory estimate fits, up to DEFAULT_COHORT; 1 on CPUs), 1 trains each alone, N at most N
    cohort_size: int = 0
    # experiment trackers that get each trial's training curve and final row (dse.trackers), e.g. ["tensorboard"]
    log_to: tuple[str, ...] = ()


@dataclass(frozen=True)
class Variant:
    """A named training setting of a study: keys of [train] replaced, e.g. one row of the paper's
    Table 3 (`setup = "ta"`, lambdas) or Table 4 (MI1 blocks and times). Written `[[variants]]`."""

    name: str
    overrides: dict[str, Any]


@dataclass(frozen=True)
class StudyConfig:
    """Everything a study needs, resolved and validated."""

    name: str
    dataset: str
    space: SpaceConfig
    data_root: str = ""  # where the data set lives (default: $DSE_DATA or ~/.cache/dse/data)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)
    patch_size: int = 2
    variants: tuple[Variant, ...] = ()

    def trainings(self) -> list[tuple[str, TrainConfig]]:
        """The (name, training config) pairs each architecture is trained with: the variants if the
        study has any, else every setup x loss of the space; each once per seed of `space.seeds`
        (train.seed replaced, the name kept: the seed is a column of its own), or once with train.seed
        when `space.seeds` is empty. A variant may not set `seed` itself when `space.seeds` is given
        (`validate` refuses it)."""
        if self.variants:
            named = [(v.name, variant_train(self.train, v)) for v in self.variants]
        else:
            named = [(f"{s}-{l}", dataclasses.replace(self.train, setup=s, loss=l))
                     for s in self.space.setups for l in self.space.losses]
        if not self.space.seeds:
            return named
        return [(name, dataclasses.replace(train, seed=seed)) for name, train in named for seed in self.space.seeds]

    def pairs_dir(self) -> Path:
        if self.teacher.pairs_dir:
            return Path(self.teacher.pairs_dir)
        t = self.teacher
        return Path(self.run.results_dir) / PAIRS_DIR / f"{self.dataset}-{t.kind}-{t.num_pairs}-s{t.seed}"

    def to_raw(self) -> dict[str, Any]:
        """The config in the sectioned layout of a space file (what `study_from_dict` reads)."""
        raw: dict[str, Any] = {
            "study": {"name": self.name},
            "data": {"dataset": self.dataset, "root": self.data_root, "patch_size": self.patch_size},
        }
        for section in _SECTIONS:
            values = dataclasses.asdict(getattr(self, section))
            raw[section] = {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
        if self.variants:
            raw["variants"] = [{"name": v.name, **{k: list(x) if isinstance(x, tuple) else x for k, x in v.overrides.items()}}
                               for v in self.variants]
        return raw

    def to_json(self) -> str:
        return json.dumps(self.to_raw(), indent=2, sort_keys=True)


_SECTIONS = {
    "teacher": TeacherConfig,
    "space": SpaceConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
    "run": RunConfig,
}
# The names a study may use, kept here as light tables (config imports no torch); each equals the
# registry of the module that owns the plug-ins (tests/test_registries.py checks it).
KNOWN_SETUPS = ("get", "mi1", "ta", "dmd")  # dse.distill.setups.SETUPS
KNOWN_LOSSES = ("l1", "l2", "lpips")  # dse.distill.losses.LOSSES
KNOWN_EXTRACTORS = ("auto", "inception-v3-compat", "inception-v3-fid-helper", "dse-digits-classifier-v1")  # dse.metrics.extractors
TEACHER_KINDS = ("empirical", "trained", "external", "diffusers", "store")  # the teacher registry, plus the pairs of a given store
SEARCHES = ("grid", "optuna")  # run.search: the executor's searchers
TRACKERS = ("tensorboard", "mlflow", "wandb")  # run.log_to: dse.trackers.TRACKERS
LPIPS_NETS = ("alex", "vgg")  # dse.assets.lpips.TRUNKS
SPLITS = ("train", "test")  # dse.data.datasets.SPLITS: what eval.reference may name
LATENCY_RUNTIMES = ("torch", "onnxruntime", "command")  # what dse.metrics.runtimes measures with (its RUNTIMES)
# what eval.latency_command may name in braces (dse.metrics.runtimes.command_values fills each one)
COMMAND_FIELDS = ("onnx", "batch", "num_images", "batches", "repeats", "warmup", "guidance", "channels",
                  "image_size", "num_classes", "z_shape", "y_shape", "device_name")

Rule = tuple[Callable[[float], bool], str]
_POSITIVE: Rule = (lambda v: v > 0, "must be positive (> 0)")
_NOT_NEGATIVE: Rule = (lambda v: v >= 0, "must be >= 0")
_FRACTION: Rule = (lambda v: 0 <= v < 1, "must be in [0, 1)")
_LAMBDA: Rule = (lambda v: v >= 0, "must be >= 0 (ta_lambda0/1/2: each >= 0 and not all 0)")


def _at_least(n: int) -> Rule:
    return (lambda v: v >= n, f"must be >= {n}")


# The range of every number of every section (of each element, for a list); floats must also be
# finite. Rules between keys (lower <= upper, sigma_min < sigma_max, heads dividing the width, ...)
# are in `validate`; `data.patch_size` is checked by `dataset_geometry`.
RANGES: dict[str, dict[str, Rule]] = {
    "teacher": {"num_pairs": _POSITIVE, "seed": _NOT_NEGATIVE, "num_steps": _POSITIVE, "sigma_min": _POSITIVE,
                "sigma_max": _POSITIVE, "rho": _POSITIVE, "shard_size": _POSITIVE},
    "space": {"lower": _POSITIVE, "upper": _POSITIVE, "widths": _at_least(4), "min_width": _at_least(4),
              "max_width": _at_least(4), "min_depth": _at_least(1), "max_depth": _at_least(1), "heads": _at_least(1),
              "mlp_ratio": _POSITIVE, "seeds": _NOT_NEGATIVE},
    "train": {"steps": _POSITIVE, "epochs": _NOT_NEGATIVE, "batch_size": _POSITIVE, "lr": _POSITIVE,
              "weight_decay": _NOT_NEGATIVE, "ema_decay": _FRACTION, "label_dropout": _FRACTION,
              "seed": _NOT_NEGATIVE, "checkpoint_every": _NOT_NEGATIVE, "lpips_size": _NOT_NEGATIVE,
              "mi1_blocks": _at_least(1), "mi1_times": (lambda v: 0 <= v <= 1, "must be in [0, 1] (fractions of noise left)"),
              "mi1_sigma_min": _POSITIVE, "mi1_sigma_max": _POSITIVE, "mi1_rho": _POSITIVE,
              "ta_depth": _at_least(1), "ta_width": _at_least(4), "ta_heads": _at_least(1), "ta_steps": _NOT_NEGATIVE,
              "ta_lambda0": _LAMBDA, "ta_lambda1": _LAMBDA, "ta_lambda2": _LAMBDA,
              "dmd_weight": _NOT_NEGATIVE, "dmd_regression_weight": _NOT_NEGATIVE, "dmd_fake_lr": _POSITIVE,
              "dmd_fake_depth": _at_least(1), "dmd_fake_width": _at_least(4), "dmd_fake_heads": _at_least(1)},
    "eval": {"num_samples": (lambda v: v >= 2, "must be at least 2 (FID estimates a covariance)"),
             "guidance": _NOT_NEGATIVE, "reference_num": _NOT_NEGATIVE, "latency_num_images": _POSITIVE,
             "latency_batch": _POSITIVE, "latency_repeats": _POSITIVE, "onnx_num_images": _NOT_NEGATIVE,
             "samples_per_class": _NOT_NEGATIVE, "seed": _NOT_NEGATIVE,
             "fid_bootstrap": (lambda v: v == 0 or v >= 2, "must be 0 (no bootstrap) or at least 2 (one resample has no spread)"),
             "latency_timeout": _POSITIVE},
    "run": {"cpus_per_trial": _NOT_NEGATIVE,
            "gpus_per_trial": (lambda v: v == -1 or 0 <= v <= 1 or (v > 1 and v.is_integer()),
                               "must be >= 0 (a fraction up to 1, whole GPUs above) or -1 (from the model's memory)"),
            "num_samples": _NOT_NEGATIVE, "halving_rungs": _at_least(2), "halving_eta": _at_least(2),
            "cohort_size": (lambda v: 0 <= v <= MAX_COHORT, f"must be 0 (choose), 1 (alone) or up to {MAX_COHORT}")},
}

_BUDGET_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)(?:e([+-]?\d+))?\s*([kKmM]?)\s*$")
_SUFFIX = {"": 1, "k": 1_000, "m": 1_000_000}


def format_count(n: int | float) -> str:
    """420864 -> '421k', 4881612 -> '4.88M' (for tables and messages)."""
    if n >= 1e6:
        return f"{n / 1e6:.3g}M"
    if n >= 1e3:
        return f"{n / 1e3:.3g}k"
    return str(int(n))


def parse_budget(budget: str | int | float, what: str = "budget") -> int:
    """A parameter budget as an integer: "420k", "0.42M", "5M", "5e6" and 5000000 all work."""
    if isinstance(budget, bool):
        raise DseError(f"invalid {what} {budget!r}")
    if isinstance(budget, (int, float)):
        value = budget
    else:
        m = _BUDGET_RE.match(str(budget))
        if not m:
            raise DseError(
                f"invalid {what} {budget!r}: use a number of parameters such as 420k, 0.42M, 5M, 5e6 or 5000000"
            )
        mantissa, exponent, suffix = m.groups()
        value = float(f"{mantissa}e{exponent or 0}") * _SUFFIX[suffix.lower()]  # 1e400 is inf, not an error
    if (isinstance(value, float) and not math.isfinite(value)) or value < 1:
        raise DseError(f"invalid {what} {budget!r}: it must be a positive, finite number of parameters "
                       "such as 420k, 5M or 5e6")
    return int(round(value))


_LATENCY_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)(?:e([+-]?\d+))?\s*(ns|us|µs|ms|s|min)\s*"
                         r"(?:/\s*(\d+(?:\.\d*)?)(?:e([+-]?\d+))?\s*([kK]?)\s*(?:images?|img)?)?\s*$")
LATENCY_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0}


def parse_latency(text: str) -> tuple[float, int]:
    """A latency limit as (seconds, images): "2ms" is 2 ms per image (0.002, 1); "30s/50000", "30s/50k" and
    "1.2 s / 10k images" are seconds for that many images. The unit is required (ns, us, ms, s, min)."""
    m = _LATENCY_RE.match(str(text))
    example = "use a time with its unit, per image (2ms, 0.5ms) or per N images (30s/50000, 1.2s/10k)"
    if not m:
        raise DseError(f"invalid max_latency {text!r}: {example}")
    mantissa, exponent, unit, n_mantissa, n_exponent, n_suffix = m.groups()
    seconds = float(f"{mantissa}e{exponent or 0}") * LATENCY_UNITS[unit]
    images = 1.0 if n_mantissa is None else float(f"{n_mantissa}e{n_exponent or 0}") * _SUFFIX[n_suffix.lower()]
    if not (math.isfinite(seconds) and seconds > 0):
        raise DseError(f"invalid max_latency {text!r}: the time must be positive and finite; {example}")
    if not (math.isfinite(images) and images >= 1 and float(images).is_integer()):
        raise DseError(f"invalid max_latency {text!r}: the number of images must be a whole number >= 1; {example}")
    return seconds, int(images)


_KIND_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
_KINDS_NAMES = {int: "integers", float: "numbers", str: "strings"}


def _build(cls, section: str, values: dict[str, Any], source: str):
    """Make dataclass `cls` from a TOML table, rejecting unknown keys and wrong types."""
    if not isinstance(values, dict):
        raise DseError(f"{source}: [{section}] must be a table")
    kinds = get_type_hints(cls)
    unknown = sorted(set(values) - set(kinds))
    if unknown:
        raise DseError(
            f"{source}: unknown key(s) {', '.join(unknown)} in [{section}]; "
            f"known: {', '.join(kinds)}"
        )
    kwargs = {}
    for key, value in values.items():
        if key in ("budget", "max_params") and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)  # budget = 5e6 reads like budget = "5e6" (max_params too)
        kwargs[key] = _coerce(value, kinds[key], f"{source}: [{section}] {key}")
    return cls(**kwargs)


def _coerce(value: Any, kind: Any, where: str) -> Any:
    """`value` (from TOML, --set or an option) as a value of the field type `kind`, else a DseError
    naming the key: a float field takes an integer, an integer field an integral float (1e3), a list
    field a list or a single value (made a tuple); a bool is never a number."""
    if isinstance(kind, types.UnionType):  # heads: a word ("all", "rule") or a list of head counts
        if isinstance(value, str) and str in get_args(kind):
            return value
        kind = next(k for k in get_args(kind) if k is not str)
    if get_origin(kind) is tuple and get_origin(get_args(kind)[0]) is tuple:  # architectures: [[d, w, h], ...]
        items = value if isinstance(value, (list, tuple)) else None  # a tuple: from `to_raw` of a config
        if items is None or not all(isinstance(v, (list, tuple)) and len(v) == 3 and all(_fits(x, int) for x in v) for v in items):
            raise DseError(f"{where} has the wrong type: got {value!r}, expected a list of [depth, width, heads] "
                           "lists of integers, e.g. [[5, 64, 8], [9, 48, 6]]")
        return tuple(tuple(int(x) for x in v) for v in items)
    if get_origin(kind) is tuple:
        item = get_args(kind)[0]
        items = value if isinstance(value, list) else [value]
        if not all(_fits(v, item) for v in items):
            raise DseError(f"{where} has the wrong type: got {value!r}, expected a list of {_KINDS_NAMES[item]}")
        return tuple(item(v) for v in items)
    if isinstance(value, list):
        raise DseError(f"{where} must be a single value, not a list")
    if not _fits(value, kind):
        raise DseError(f"{where} has the wrong type: got {value!r}, expected {_KIND_NAMES[kind]}")
    return kind(value)


def _fits(value: Any, kind: type) -> bool:
    if isinstance(value, bool) or kind is bool:
        return isinstance(value, bool) and kind is bool
    if kind is float:  # an integer too large for a float is no number dse can use
        return isinstance(value, float) or (isinstance(value, int) and abs(value) <= sys.float_info.max)
    if kind is int:
        return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    return isinstance(value, kind)


def study_from_dict(data: dict[str, Any], source: str = "<config>") -> StudyConfig:
    """Build and validate a StudyConfig from parsed TOML."""
    if not isinstance(data, dict):
        raise DseError(f"{source}: a study config is a table of sections, not {type(data).__name__}")
    allowed = {"study", "data", "variants", *_SECTIONS}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise DseError(f"{source}: unknown section(s) {', '.join(unknown)}; known: {', '.join(sorted(allowed))}")
    study = data.get("study", {})
    data_section = data.get("data", {})
    for name, section, keys in (("study", study, {"name"}), ("data", data_section, {"dataset", "root", "patch_size"})):
        if not isinstance(section, dict):
            raise DseError(f"{source}: [{name}] must be a table")
        extra = sorted(set(section) - keys)
        if extra:
            raise DseError(f"{source}: unknown key(s) {', '.join(extra)} in [{name}]; known: {', '.join(sorted(keys))}")
    parts = {name: _build(cls, name, data.get(name, {}), source) for name, cls in _SECTIONS.items()}
    variants = _variants(data.get("variants", []), parts["train"], source)
    cfg = StudyConfig(
        variants=variants,
        name=_coerce(study.get("name", ""), str, f"{source}: [study] name"),
        dataset=_coerce(data_section.get("dataset", "digits"), str, f"{source}: [data] dataset"),
        data_root=_coerce(data_section.get("root", ""), str, f"{source}: [data] root"),
        patch_size=_coerce(data_section.get("patch_size", 2), int, f"{source}: [data] patch_size"),
        **parts,
    )
    validate(cfg, source)
    return cfg


def variant_train(base: TrainConfig, variant: Variant) -> TrainConfig:
    """The training config of a variant: `base` with the variant's keys replaced."""
    return dataclasses.replace(base, **variant.overrides)


def _variants(items: Any, base: TrainConfig, source: str) -> tuple[Variant, ...]:
    if not isinstance(items, list) or not all(isinstance(v, dict) for v in items):
        raise DseError(f"{source}: variants must be written as [[variants]] tables")
    out, names = [], set()
    for i, item in enumerate(items):
        name = str(item.get("name", "")).strip()
        if not name or name in names:
            raise DseError(f"{source}: each [[variants]] needs a unique name (variant {i + 1})")
        names.add(name)
        checked = _build(TrainConfig, f"variants.{name}", {k: v for k, v in item.items() if k != "name"}, source)
        overrides = {k: getattr(checked, k) for k in item if k != "name"}
        out.append(Variant(name, overrides))
    return tuple(out)


def _check_numbers(part: Any, section: str, where: str) -> None:
    """Every number of `part` (the dataclass of [section]) finite and in its range (`RANGES`)."""
    for key, (ok, rule) in RANGES[section].items():
        value = getattr(part, key)
        for v in value if isinstance(value, tuple) else (value,):
            if isinstance(v, str):  # heads = "all" | "rule"
                continue
            if isinstance(v, float) and not math.isfinite(v):
                raise DseError(f"{where}: {section}.{key} must be a finite number (got {v})")
            if not ok(v):
                raise DseError(f"{where}: {section}.{key} {rule} (got {v!r})")


# A Ray cluster address: HOST:PORT, [IPv6]:PORT or ray://HOST:PORT (Ray Client); "auto" is a Ray already running here
_ADDRESS = re.compile(r"(?P<scheme>ray://)?(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9.-]*):(?P<port>\d{1,5})")


def parse_address(address: str) -> tuple[str, str, int] | None:
    """(scheme "ray://" or "", host, port) of a cluster address; None for "auto" (a Ray already
    running on this machine); a DseError for anything else."""
    if address == "auto":
        return None
    m = _ADDRESS.fullmatch(address)
    if m is None or not 0 < int(m["port"]) < 65536:
        raise DseError(f"Ray address {address!r}: use HOST:PORT (e.g. 10.0.0.1:6379, the head's `ray start --head "
                       "--port`), ray://HOST:PORT (Ray Client) or auto")
    return m["scheme"] or "", m["host"].strip("[]"), int(m["port"])


def validate(cfg: StudyConfig, source: str = "<config>") -> None:
    """Raise DseError for settings that cannot work; messages name the key and the fix.

    The name may be "" (not named yet: `load_study` names a study after its file); every other
    value is checked, numbers by `RANGES`. Whether a CUDA device exists is checked where the study
    starts (`device.resolve_device`): here only its name.
    """
    s, e = cfg.space, cfg.eval
    if not s.budget:
        raise DseError(f"{source}: [space] budget is required (e.g. budget = \"420k\")")
    try:
        if cfg.name:
            check_name(cfg.name)
        check_device_name(cfg.run.device)
        if cfg.run.address:
            parse_address(cfg.run.address)
        dataset_geometry(cfg.dataset, cfg.patch_size)
        s.budget_params  # parsed here, once, and kept on the space
        s.max_params_count, s.max_latency_per_image_s  # the constraints too
    except DseError as exc:
        raise DseError(f"{source}: {exc}") from None
    for section in ("teacher", "space", "run"):
        _check_numbers(getattr(cfg, section), section, source)
    if not s.lower <= s.upper:
        raise DseError(f"{source}: [space] needs 0 < lower <= upper (got lower={s.lower}, upper={s.upper})")
    if any(w % 4 for w in s.widths):
        raise DseError(f"{source}: [space] widths must be positive multiples of 4 (the 2-D sin-cos position embedding splits the width in four)")
    if s.min_width > s.max_width or s.min_depth > s.max_depth:
        raise DseError(f"{source}: [space] needs min_width <= max_width and 1 <= min_depth <= max_depth")
    if s.depths not in DEPTH_CHOICES:
        raise DseError(f"{source}: [space] depths must be one of {', '.join(map(repr, DEPTH_CHOICES))}, not {s.depths!r}")
    if isinstance(s.heads, str) and s.heads not in ("all", "rule"):
        raise DseError(f"{source}: [space] heads must be \"all\", \"rule\" or a list of integers, not {s.heads!r}")
    for arch in s.architectures:
        d, w, h = arch
        if d < 1 or w < 4 or h < 1 or w % 4 or w % h:
            raise DseError(f"{source}: [space] architectures entry {list(arch)}: [depth, width, heads] needs depth >= 1, "
                           "a width that is a positive multiple of 4, and heads >= 1 dividing the width")
    if s.architectures:
        default = SpaceConfig()
        enumerating = [k for k in ("widths", "min_width", "max_width", "min_depth", "max_depth", "heads", "depths")
                       if getattr(s, k) != getattr(default, k)]
        if enumerating:
            raise DseError(f"{source}: [space] architectures lists the students, so {', '.join(enumerating)} would be "
                           "ignored; remove them, or remove architectures (--set space.architectures=[]) to enumerate")
    if len(set(s.architectures)) != len(s.architectures):
        raise DseError(f"{source}: [space] architectures lists an architecture twice")
    if len(set(s.seeds)) != len(s.seeds) or len(s.seeds) > MAX_SEEDS:
        raise DseError(f"{source}: [space] seeds = {list(s.seeds)}: give at most {MAX_SEEDS} distinct training seeds, "
                       "each >= 0 (e.g. seeds = [0, 1, 2])")
    seeded = [v.name for v in cfg.variants if "seed" in v.overrides]
    if s.seeds and seeded:
        raise DseError(f"{source}: variant {seeded[0]!r} sets seed, but [space] seeds = {list(s.seeds)} gives every "
                       "training its seeds; remove seed from the variant (or leave space.seeds empty)")
    if s.heads == ():
        raise DseError(f"{source}: [space] heads = []: give \"all\", \"rule\" or at least one head count")
    for name, values, known in (("setups", s.setups, KNOWN_SETUPS), ("losses", s.losses, KNOWN_LOSSES)):
        bad = [v for v in values if v not in known]
        if bad or not values:
            raise DseError(f"{source}: [space] {name} = {list(values)}: known values are {', '.join(known)}")
    t = cfg.teacher
    if t.sigma_min >= t.sigma_max:
        raise DseError(f"{source}: teacher.sigma_min must be below teacher.sigma_max (got {t.sigma_min} and {t.sigma_max})")
    _validate_eval(e, source)
    for name, train in cfg.trainings():
        _validate_train(train, source if not cfg.variants else f"{source}: variant {name!r}")
    if cfg.teacher.image_dtype not in ("float32", "float16"):
        raise DseError(f"{source}: teacher.image_dtype must be float32 or float16 (got {cfg.teacher.image_dtype!r})")
    if cfg.teacher.kind not in TEACHER_KINDS:
        raise DseError(f"{source}: teacher.kind must be {_either(TEACHER_KINDS)} (got {cfg.teacher.kind!r})")
    if cfg.teacher.kind == "store" and not cfg.teacher.pairs_dir:
        raise DseError(f"{source}: teacher.kind = \"store\" needs teacher.pairs_dir (e.g. pairs made by `dse teacher import-get`)")
    if cfg.teacher.kind in ("trained", "external", "diffusers") and not cfg.teacher.source:
        raise DseError(f"{source}: teacher.kind = {cfg.teacher.kind!r} needs teacher.source (a checkpoint, a TorchScript file / module:function, or a diffusers folder)")
    if cfg.run.search not in SEARCHES:
        raise DseError(f"{source}: run.search must be {_either(SEARCHES)} (got {cfg.run.search!r})")
    unknown_trackers = [n for n in cfg.run.log_to if n not in TRACKERS]
    if unknown_trackers:
        raise DseError(f"{source}: run.log_to: unknown tracker {unknown_trackers[0]!r}; use {_either(TRACKERS)} "
                       "(--log-to is repeatable)")
    if cfg.run.cohort_size > 1 and (cfg.run.search != "grid" or cfg.run.halving):
        raise DseError(f"{source}: run.cohort_size = {cfg.run.cohort_size} trains students together, which only grid "
                       "search without halving does (optuna and halving decide trial by trial); use --cohort-size 1 "
                       "or 0 (choose)")


def _either(names: tuple[str, ...]) -> str:
    """("a", "b", "c") -> "a, b or c"."""
    return f"{', '.join(names[:-1])} or {names[-1]}"


def eval_from_dict(values: dict[str, Any], source: str = "options") -> EvalConfig:
    """A validated EvalConfig from `[eval]`-style keys (the defaults for the others)."""
    e = _build(EvalConfig, "eval", values, source)
    _validate_eval(e, source)
    return e


def _validate_eval(e: EvalConfig, source: str) -> None:
    _check_numbers(e, "eval", source)
    if e.reference not in SPLITS:
        raise DseError(f"{source}: eval.reference must be {_either(SPLITS)} (got {e.reference!r})")
    if e.extractor not in KNOWN_EXTRACTORS:
        raise DseError(f"{source}: eval.extractor must be one of {', '.join(KNOWN_EXTRACTORS)} (got {e.extractor!r})")
    if e.latency_runtime not in LATENCY_RUNTIMES:
        raise DseError(f"{source}: eval.latency_runtime must be {_either(LATENCY_RUNTIMES)} (got {e.latency_runtime!r})")
    if e.latency_runtime == "command":
        check_command_template(e.latency_command, f"{source}: eval.latency_command")
        if not e.latency_device_name.strip():
            raise DseError(f"{source}: eval.latency_runtime = \"command\" needs eval.latency_device_name, the device "
                           "the command measures on (e.g. \"jetson-orin-nano\"); rows and the latency cache name it")
    elif e.latency_command:
        raise DseError(f"{source}: eval.latency_command is set but eval.latency_runtime is {e.latency_runtime!r}; "
                       "set latency_runtime = \"command\" to use it")


def check_command_template(template: str, where: str) -> None:
    """A DseError unless `template` is a non-empty command whose {fields} are all in COMMAND_FIELDS
    (literal braces are written {{ and }}) and that names {onnx}, the graph it must time."""
    import string

    if not template.strip():
        raise DseError(f"{where} is empty: give the command that times {{onnx}}, e.g. "
                       "\"ssh jetson 'bash time_onnx.sh {onnx} {batch} {num_images}'\"")
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise DseError(f"{where}: {exc} (write a literal brace as {{{{ or }}}})") from None
    bad = sorted({f for f in fields if f not in COMMAND_FIELDS})
    if bad:
        raise DseError(f"{where} names {', '.join('{' + f + '}' for f in bad)}; known fields: "
                       f"{', '.join('{' + f + '}' for f in COMMAND_FIELDS)}")
    if "onnx" not in fields:
        raise DseError(f"{where} does not name {{onnx}}, the exported graph it must time")


def _validate_train(t: TrainConfig, where: str) -> None:
    """Check one training config; `where` says which (the [train] table or a named variant)."""
    _check_numbers(t, "train", where)
    if t.setup not in KNOWN_SETUPS or t.loss not in KNOWN_LOSSES:
        raise DseError(f"{where}: train.setup {t.setup!r} / train.loss {t.loss!r}: known setups {', '.join(KNOWN_SETUPS)}, "
                       f"losses {', '.join(KNOWN_LOSSES)}")
    if t.lpips_net not in LPIPS_NETS:
        raise DseError(f"{where}: train.lpips_net must be {_either(LPIPS_NETS)} (got {t.lpips_net!r})")
    if t.mi1_sigma_min >= t.mi1_sigma_max:
        raise DseError(f"{where}: train.mi1_sigma_min must be below train.mi1_sigma_max (got {t.mi1_sigma_min} and {t.mi1_sigma_max})")
    if t.setup == "mi1":
        blocks, times = t.mi1_blocks, t.mi1_times
        if not blocks or len(blocks) != len(times) or list(blocks) != sorted(set(blocks)):
            raise DseError(f"{where}: setup mi1 needs mi1_blocks (increasing, from 1) and mi1_times of the same length")
    own_dits = {"ta": ("ta", t.ta_width, t.ta_heads), "dmd": ("dmd_fake", t.dmd_fake_width, t.dmd_fake_heads)}
    if t.setup in own_dits:  # the setup's own DiT: the TA, DMD's fake score
        prefix, width, heads = own_dits[t.setup]
        if width % 4 or width % heads:
            raise DseError(f"{where}: train.{prefix}_width must be a multiple of 4 and of train.{prefix}_heads "
                           f"(got width {width}, heads {heads})")
    if t.setup == "ta":
        if t.ta_steps <= 0 and not t.ta_checkpoint:
            raise DseError(f"{where}: setup ta needs train.ta_steps > 0 (to train the TA) or a ta_checkpoint to load")
        lambdas = (t.ta_lambda0, t.ta_lambda1, t.ta_lambda2)
        if max(lambdas) == 0:
            raise DseError(f"{where}: train.ta_lambda0/1/2 must be >= 0 and not all 0 (got {list(lambdas)})")
        if t.ta_feature_loss not in ("lpips", "mse"):
            raise DseError(f"{where}: train.ta_feature_loss must be lpips or mse (got {t.ta_feature_loss!r})")
    if t.setup == "dmd" and max(t.dmd_regression_weight, t.dmd_weight) == 0:
        raise DseError(f"{where}: train.dmd_regression_weight and train.dmd_weight must be >= 0 and not both 0")


def load_study(path: str | Path) -> StudyConfig:
    """Read a search-space TOML file into a validated StudyConfig (named after the file's stem
    unless its [study] table names it)."""
    p = Path(path)
    if not p.is_file():
        raise DseError(f"space file not found: {p} (see search_spaces/ for examples)")
    try:
        data = tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise DseError(f"{p}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise DseError(f"{p}: cannot read the space file: {exc.strerror}") from None
    study = data.get("study", {})
    if isinstance(study, dict) and not study.get("name"):
        data = {**data, "study": {**study, "name": p.stem}}
    return study_from_dict(data, source=str(p))


def with_paper_widths(cfg: StudyConfig) -> StudyConfig:
    """`cfg` exploring the paper's widths {2^n, 3*2^n}, each at the depth closest to the budget and
    with the design rule's heads (one model per width, as in the paper's Table 2), its other settings
    kept: what `dse run --budget B` uses without a space file (the demo's three widths suit only the
    demo's own budget)."""
    return dataclasses.replace(cfg, space=dataclasses.replace(cfg.space, widths=(), heads="rule", depths="closest",
                                                              architectures=()))


def parse_assignments(items: list[str]) -> dict[str, dict[str, Any]]:
    """`["train.steps=20", "data.dataset=digits"]` -> {"train": {"steps": 20}, "data": {"dataset": "digits"}}.
    Values are read as TOML (20, 1e-3, true, [3, 6], "text"); anything else is taken as a string."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        name, sep, text = item.partition("=")
        section, dot, key = name.strip().partition(".")
        if not sep or not dot or not key or section not in ("study", "data", *_SECTIONS):
            raise DseError(f"--set {item!r}: write SECTION.KEY=VALUE with SECTION one of "
                           f"study, data, {', '.join(_SECTIONS)} (e.g. --set train.steps=20)")
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text
        out.setdefault(section, {})[key] = value
    return out


def with_overrides(cfg: StudyConfig, **sections: dict[str, Any]) -> StudyConfig:
    """A validated copy of `cfg` with some keys replaced (None leaves a key as it is), e.g.
    `with_overrides(cfg, space={"budget": "5M"}, study={"name": "x"})`."""
    raw = cfg.to_raw()
    for section, values in sections.items():
        raw[section].update({k: list(v) if isinstance(v, tuple) else v for k, v in values.items() if v is not None})
    return study_from_dict(raw, source="options")


# The embedded default space: what a command uses without --space.
DEMO_SPACE = Path(__file__).resolve().parent.parent / "search_spaces" / "demo.toml"


def study_or_demo(space_file: str | Path | None, budget: str | None = None) -> StudyConfig:
    """The space file; without one the demo, and with a budget the demo over the paper's widths
    (`with_paper_widths`)."""
    if space_file:
        return load_study(space_file)
    demo = load_study(DEMO_SPACE)
    return with_paper_widths(demo) if budget else demo


def default_study_name(cfg: StudyConfig, budget: str | None) -> str | None:
    """The name `dse run` gives a study: the space's name plus the --budget given (`demo-5M`); None
    (the space's own name) without one."""
    return f"{cfg.name}-{format_count(parse_budget(budget))}" if budget else None


def with_options(cfg: StudyConfig, **sections: dict[str, Any]) -> StudyConfig:
    """`cfg` with the options a user gave (None: not given), validated again only if any was."""
    given = any(v is not None for values in sections.values() for v in values.values())
    return with_overrides(cfg, **sections) if given else cfg


def study_for_run(space_file: str | Path | None, *, name: str | None = None, assignments: list[str] | None = None,
                  **sections: dict[str, Any]) -> StudyConfig:
    """The study `dse run` runs: the space file or the demo (`study_or_demo`), named `name` or
    `default_study_name`, with the options given (`sections`: {section: {key: value or None}},
    `space.budget` among them) and then the `--set` assignments applied; validated."""
    budget = sections.get("space", {}).get("budget")
    base = study_or_demo(space_file, budget)
    if name is not None:
        check_name(name)
    options = {**sections, "study": {"name": name if name is not None else default_study_name(base, budget)}}
    for section, values in parse_assignments(assignments or []).items():
        options[section] = {**options.get(section, {}), **values}
    return with_options(base, **options)


def study_for_sizing(space_file: str | Path | None, *, own_geometry: bool = False, **space: Any) -> StudyConfig:
    """The study `dse space` and `dse propose` size for: the space file or the demo (`study_or_demo`)
    with the [space] keys given (None: not given); with `own_geometry` (the user gives the image
    geometry) and no space file, the default space with only the budget and band given, since the
    demo's widths suit only its own data set."""
    cfg = with_options(study_or_demo(space_file, space.get("budget")), space=space)
    if space_file is None and own_geometry:  # the paper's full space, not the demo's
        s = cfg.space
        cfg = dataclasses.replace(cfg, space=SpaceConfig(budget=s.budget, lower=s.lower, upper=s.upper))
    return cfg
