"""Owns the study configuration: frozen dataclasses, TOML loading and validation (no torch, no ray).

A search-space file (`search_spaces/*.toml`) has the sections `[study]`, `[data]`, `[teacher]`,
`[space]`, `[train]`, `[eval]` and `[run]`; every key is optional except `space.budget`, and an
unknown section or key is an error (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dse.errors import DseError


@dataclass(frozen=True)
class Geometry:
    """What the student generates: square images of `channels` x `image_size`^2, `num_classes` labels."""

    image_size: int = 32
    channels: int = 3
    num_classes: int = 10
    patch_size: int = 2

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclass(frozen=True)
class StudentArch:
    """A DiT student: `depth` blocks of width `width` with `heads` attention heads."""

    depth: int
    width: int
    heads: int
    mlp_ratio: float = 4.0

    @property
    def name(self) -> str:
        return f"d{self.depth}-w{self.width}-h{self.heads}"


@dataclass(frozen=True)
class TeacherConfig:
    """How the offline (noise z, label y, image x) pairs are made: teacher, EDM sampler settings."""

    kind: str = "empirical"  # empirical | trained | external | store (use the pairs at pairs_dir as they are)
    source: str = ""  # trained: checkpoint path; external: TorchScript file or module:function
    num_pairs: int = 4096
    pairs_dir: str = ""  # default: results/pairs/<dataset>-<kind>-<num_pairs>
    seed: int = 0
    num_steps: int = 18
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    shard_size: int = 65536
    image_dtype: str = "float32"  # or "float16": half the disk for a million 32x32x3 pairs


@dataclass(frozen=True)
class SpaceConfig:
    """Which student architectures a study explores.

    `widths`: empty means {2^n, 3*2^n} from `min_width` to `max_width`; `heads` is "all" (every
    divisor of the width), "rule" (the design rule's heads only) or a list of head counts.
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
    mlp_ratio: float = 4.0
    setups: tuple[str, ...] = ("get",)
    losses: tuple[str, ...] = ("l2",)


@dataclass(frozen=True)
class TrainConfig:
    """One distillation run: AdamW, EMA, a fixed number of steps (paper App. C defaults)."""

    setup: str = "get"
    loss: str = "l2"
    steps: int = 1000
    epochs: float = 0  # if > 0, the length in passes over the pairs instead of `steps` (paper: 100)
    batch_size: int = 256
    lr: float = 1e-4
    weight_decay: float = 0.01
    ema_decay: float = 0.9999
    label_dropout: float = 0.1
    seed: int = 0
    checkpoint_every: int = 0  # steps between checkpoints of a trial (0: only at the end)
    lpips_net: str = "alex"  # or "vgg"
    lpips_size: int = 224  # images are resized bilinearly to this before LPIPS, as GET does; 0: no resize
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


@dataclass(frozen=True)
class RunConfig:
    """Where and how trials run (docs/running.md).

    `cpus_per_trial = 0` gives each trial every CPU of a node; `gpus_per_trial = -1` chooses the GPU
    share from the candidate's estimated peak memory (0 when there is no GPU); a fraction such as
    0.25 packs four trials on one GPU. `search` is "grid" (every candidate) or "optuna"
    (multi-objective TPE over the candidates, `num_samples` trials); `halving` stops trials whose
    partial results are dominated (successive halving on the non-dominated rank).
    """

    results_dir: str = "results"
    reports_dir: str = "reports"
    cpus_per_trial: float = 0
    gpus_per_trial: float = -1
    device: str = "auto"
    address: str = ""
    search: str = "grid"
    num_samples: int = 0  # optuna: trials to sample (0: as many as there are candidates)
    halving: bool = False
    halving_rungs: int = 3  # rungs at 1/eta^(k-1), ..., 1/eta, 1 of the training steps
    halving_eta: int = 3  # at each rung, keep the best 1/eta by non-dominated rank
    retry_failed: bool = False  # run trials stored as failed again


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
        study has any, else every setup x loss of the space."""
        if self.variants:
            return [(v.name, variant_train(self.train, v)) for v in self.variants]
        return [(f"{s}-{l}", dataclasses.replace(self.train, setup=s, loss=l))
                for s in self.space.setups for l in self.space.losses]

    def pairs_dir(self) -> Path:
        if self.teacher.pairs_dir:
            return Path(self.teacher.pairs_dir)
        t = self.teacher
        return Path(self.run.results_dir) / "pairs" / f"{self.dataset}-{t.kind}-{t.num_pairs}-s{t.seed}"

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
KNOWN_SETUPS = ("get", "mi1", "ta", "dmd")  # dse.distill.setups.SETUPS
KNOWN_LOSSES = ("l1", "l2", "lpips")  # dse.distill.losses.LOSS_NAMES
KNOWN_EXTRACTORS = ("auto", "inception-v3-compat", "inception-v3-fid-helper", "dse-digits-classifier-v1")  # metrics/fid.py


def _build(cls, section: str, values: dict[str, Any], source: str):
    """Make dataclass `cls` from a TOML table, rejecting unknown keys and wrong types."""
    if not isinstance(values, dict):
        raise DseError(f"{source}: [{section}] must be a table")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise DseError(
            f"{source}: unknown key(s) {', '.join(unknown)} in [{section}]; "
            f"known: {', '.join(fields)}"
        )
    kwargs = {}
    for key, value in values.items():
        default = fields[key].default
        kwargs[key] = _coerce(value, None if default is dataclasses.MISSING else default, f"{source}: [{section}] {key}")
    return cls(**kwargs)


def _coerce(value: Any, default: Any, where: str) -> Any:
    """Check a TOML value against the type of its default; lists become tuples."""
    if isinstance(value, list):
        if isinstance(default, str):  # e.g. heads = [4, 8] where the default is "all"
            pass
        elif default is not None and not isinstance(default, tuple):
            raise DseError(f"{where} must be a single value, not a list")
        return tuple(value)
    if default is None or (isinstance(default, bool) and isinstance(value, bool)):
        return value
    if isinstance(default, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, int) and isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(default, str) and isinstance(value, str):
        return value
    if isinstance(default, tuple) and isinstance(value, str):
        return (value,)
    if isinstance(default, str) and isinstance(value, (int, float)) and where.endswith("budget"):
        return str(value)
    raise DseError(f"{where} has the wrong type: got {value!r}, expected {type(default).__name__}")


def study_from_dict(data: dict[str, Any], source: str = "<config>") -> StudyConfig:
    """Build and validate a StudyConfig from parsed TOML."""
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
        name=str(study.get("name", "")),
        dataset=str(data_section.get("dataset", "digits")),
        data_root=str(data_section.get("root", "")),
        patch_size=int(data_section.get("patch_size", 2)),
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


def validate(cfg: StudyConfig, source: str = "<config>") -> None:
    """Raise DseError for settings that cannot work; messages name the key and the fix."""
    from dse.sizing import parse_budget  # sizing imports config; import here to avoid a cycle

    s, e = cfg.space, cfg.eval
    if not s.budget:
        raise DseError(f"{source}: [space] budget is required (e.g. budget = \"420k\")")
    parse_budget(s.budget)
    if not 0 < s.lower <= s.upper:
        raise DseError(f"{source}: [space] needs 0 < lower <= upper (got lower={s.lower}, upper={s.upper})")
    if any(w <= 0 or w % 4 for w in s.widths) or s.min_width < 4:
        raise DseError(f"{source}: [space] widths must be positive multiples of 4 (the 2-D sin-cos position embedding splits the width in four)")
    if s.min_depth < 1 or s.max_depth < s.min_depth:
        raise DseError(f"{source}: [space] needs 1 <= min_depth <= max_depth")
    if isinstance(s.heads, str) and s.heads not in ("all", "rule"):
        raise DseError(f"{source}: [space] heads must be \"all\", \"rule\" or a list of integers, not {s.heads!r}")
    for name, values, known in (("setups", s.setups, KNOWN_SETUPS), ("losses", s.losses, KNOWN_LOSSES)):
        bad = [v for v in values if v not in known]
        if bad or not values:
            raise DseError(f"{source}: [space] {name} = {list(values)}: known values are {', '.join(known)}")
    positive = {
        "teacher.num_pairs": cfg.teacher.num_pairs,
        "teacher.num_steps": cfg.teacher.num_steps, "teacher.shard_size": cfg.teacher.shard_size,
    }
    for key, value in positive.items():
        if value <= 0:
            raise DseError(f"{source}: {key} must be positive (got {value})")
    _validate_eval(e, source)
    for name, train in cfg.trainings():
        _validate_train(train, f"{source}: [train]" if not cfg.variants else f"{source}: variant {name!r}")
    if cfg.teacher.image_dtype not in ("float32", "float16"):
        raise DseError(f"{source}: teacher.image_dtype must be float32 or float16 (got {cfg.teacher.image_dtype!r})")
    if cfg.teacher.kind not in ("empirical", "trained", "external", "store"):
        raise DseError(f"{source}: teacher.kind must be empirical, trained, external or store (got {cfg.teacher.kind!r})")
    if cfg.teacher.kind == "store" and not cfg.teacher.pairs_dir:
        raise DseError(f"{source}: teacher.kind = \"store\" needs teacher.pairs_dir (e.g. pairs made by `dse teacher import-get`)")
    if cfg.teacher.kind in ("trained", "external") and not cfg.teacher.source:
        raise DseError(f"{source}: teacher.kind = {cfg.teacher.kind!r} needs teacher.source (a checkpoint, or a TorchScript file / module:function)")
    r = cfg.run
    if r.search not in ("grid", "optuna"):
        raise DseError(f"{source}: run.search must be grid or optuna (got {r.search!r})")
    if r.num_samples < 0 or r.cpus_per_trial < 0 or (r.gpus_per_trial < 0 and r.gpus_per_trial != -1):
        raise DseError(f"{source}: run.num_samples and run.cpus_per_trial must be >= 0, run.gpus_per_trial >= 0 or -1 (auto)")
    if r.halving_rungs < 2 or r.halving_eta < 2:
        raise DseError(f"{source}: run.halving_rungs and run.halving_eta must be at least 2")
    if cfg.run.device not in ("auto", "cpu") and not cfg.run.device.startswith("cuda"):
        raise DseError(f"{source}: run.device must be auto, cpu or cuda[:N] (got {cfg.run.device!r})")


def eval_from_dict(values: dict[str, Any], source: str = "options") -> EvalConfig:
    """A validated EvalConfig from `[eval]`-style keys (the defaults for the others)."""
    e = _build(EvalConfig, "eval", values, source)
    _validate_eval(e, source)
    return e


def _validate_eval(e: EvalConfig, source: str) -> None:
    for key in ("num_samples", "latency_num_images", "latency_batch", "latency_repeats"):
        if getattr(e, key) <= 0:
            raise DseError(f"{source}: eval.{key} must be positive (got {getattr(e, key)})")
    if e.num_samples < 2:
        raise DseError(f"{source}: eval.num_samples must be at least 2 (FID estimates a covariance)")
    if e.reference not in ("train", "test"):
        raise DseError(f"{source}: eval.reference must be train or test (got {e.reference!r})")
    if e.extractor not in KNOWN_EXTRACTORS:
        raise DseError(f"{source}: eval.extractor must be one of {', '.join(KNOWN_EXTRACTORS)} (got {e.extractor!r})")
    for key in ("reference_num", "onnx_num_images", "samples_per_class"):
        if getattr(e, key) < 0:
            raise DseError(f"{source}: eval.{key} must be >= 0 (got {getattr(e, key)})")


def _validate_train(t: TrainConfig, where: str) -> None:
    """Check one training config; `where` says which (the [train] table or a named variant)."""
    if t.setup not in KNOWN_SETUPS or t.loss not in KNOWN_LOSSES:
        raise DseError(f"{where}: setup {t.setup!r} / loss {t.loss!r}: known setups {', '.join(KNOWN_SETUPS)}, "
                       f"losses {', '.join(KNOWN_LOSSES)}")
    if t.lpips_net not in ("alex", "vgg") or t.lpips_size < 0:
        raise DseError(f"{where}: lpips_net must be alex or vgg and lpips_size >= 0 (0: no resize)")
    if t.epochs < 0:
        raise DseError(f"{where}: epochs must be >= 0 (0: use steps)")
    for key in ("steps", "batch_size"):
        if getattr(t, key) <= 0:
            raise DseError(f"{where}: {key} must be positive (got {getattr(t, key)})")
    if t.setup == "mi1":
        blocks, times = t.mi1_blocks, t.mi1_times
        if not blocks or len(blocks) != len(times) or list(blocks) != sorted(set(blocks)) or min(blocks) < 1:
            raise DseError(f"{where}: setup mi1 needs mi1_blocks (increasing, from 1) and mi1_times of the same length")
        if any(not 0.0 <= x <= 1.0 for x in times):
            raise DseError(f"{where}: mi1_times are fractions of noise left, in [0, 1] (got {list(times)})")
    own_dits = {"ta": ("ta", t.ta_depth, t.ta_width, t.ta_heads),
                "dmd": ("dmd_fake", t.dmd_fake_depth, t.dmd_fake_width, t.dmd_fake_heads)}
    if t.setup in own_dits:  # the setup's own DiT: the TA, DMD's fake score
        prefix, depth, width, heads = own_dits[t.setup]
        if depth < 1 or heads < 1 or width < 4 or width % 4 or width % heads:
            raise DseError(f"{where}: {prefix}_depth must be >= 1 and {prefix}_width a positive multiple of 4 and "
                           f"of {prefix}_heads (got depth {depth}, width {width}, heads {heads})")
    if t.setup == "ta":
        if t.ta_steps <= 0 and not t.ta_checkpoint:
            raise DseError(f"{where}: setup ta needs ta_steps > 0 (to train the TA) or a ta_checkpoint to load")
        lambdas = (t.ta_lambda0, t.ta_lambda1, t.ta_lambda2)
        if min(lambdas) < 0 or max(lambdas) == 0:
            raise DseError(f"{where}: ta_lambda0/1/2 must be >= 0 and not all 0 (got {list(lambdas)})")
        if t.ta_feature_loss not in ("lpips", "mse"):
            raise DseError(f"{where}: ta_feature_loss must be lpips or mse (got {t.ta_feature_loss!r})")
    if t.setup == "dmd":
        weights = (t.dmd_regression_weight, t.dmd_weight)
        if min(weights) < 0 or max(weights) == 0:
            raise DseError(f"{where}: dmd_regression_weight and dmd_weight must be >= 0 and not both 0 (got {list(weights)})")
        if t.dmd_fake_lr <= 0:
            raise DseError(f"{where}: dmd_fake_lr must be positive (got {t.dmd_fake_lr})")
    if not 0.0 <= t.ema_decay < 1.0:
        raise DseError(f"{where}: ema_decay must be in [0, 1) (got {t.ema_decay})")
    if not 0.0 <= t.label_dropout < 1.0:
        raise DseError(f"{where}: label_dropout must be in [0, 1) (got {t.label_dropout})")


def load_study(path: str | Path) -> StudyConfig:
    """Read a search-space TOML file into a validated StudyConfig."""
    p = Path(path)
    if not p.is_file():
        raise DseError(f"space file not found: {p} (see search_spaces/ for examples)")
    try:
        data = tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise DseError(f"{p}: not valid TOML: {exc}") from None
    cfg = study_from_dict(data, source=str(p))
    if not cfg.name:
        cfg = dataclasses.replace(cfg, name=p.stem)
    return cfg


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
