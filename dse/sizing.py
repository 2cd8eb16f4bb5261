"""Owns model size: counting DiT parameters by formula, the paper's design rules, and enumerating
the architectures that fit a budget, with the design-rule one marked (pure Python, no torch).
Budgets are parsed by `dse.config.parse_budget` (also importable from here), once per space
(`SpaceConfig.budget_params`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from dse.config import SpaceConfig, format_count, parse_budget  # noqa: F401  (parse_budget: re-exported)
from dse.errors import DseError
from dse.types import Geometry, StudentArch

# DiT's timestep embedder maps a 256-d sinusoidal frequency embedding to the width (DiT models.py).
FREQUENCY_EMBEDDING_SIZE = 256


def count_params(arch: StudentArch, geometry: Geometry) -> int:
    """Parameters of the DiT student, by formula; equals `sum(p.numel())` of `dse.models.dit.DiT`.

    Counts the frozen sin-cos position embedding and the null-class row (ARCHITECTURE.md).
    """
    w, p, c = arch.width, geometry.patch_size, geometry.channels
    hidden = int(w * arch.mlp_ratio)
    patch_embed = c * p * p * w + w  # Conv2d(c, w, p, stride p)
    timestep_embed = FREQUENCY_EMBEDDING_SIZE * w + w + w * w + w  # Linear(256, w), Linear(w, w)
    label_embed = (geometry.num_classes + 1) * w  # Embedding(K + 1, w): +1 is the null class
    pos_embed = geometry.num_patches * w  # fixed sin-cos, (1, T, w)
    attention = (w * 3 * w + 3 * w) + (w * w + w)  # qkv, proj
    mlp = (w * hidden + hidden) + (hidden * w + w)  # fc1, fc2
    adaln = w * 6 * w + 6 * w  # SiLU -> Linear(w, 6w): shift/scale/gate for attn and mlp
    block = attention + mlp + adaln
    final = (w * p * p * c + p * p * c) + (w * 2 * w + 2 * w)  # linear to patches, adaLN (shift, scale)
    return patch_embed + timestep_embed + label_embed + pos_embed + arch.depth * block + final


def default_widths(min_width: int = 8, max_width: int = 1024) -> list[int]:
    """Widths of the form 2^n and 3*2^n in [min_width, max_width] (paper Sec. 3.2: hardware-friendly)."""
    widths = set()
    n = 0
    while 2**n <= max_width:
        for w in (2**n, 3 * 2**n):
            if min_width <= w <= max_width and w % 4 == 0:  # the sin-cos embedding needs w % 4 == 0
                widths.add(w)
        n += 1
    return sorted(widths)


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def rule_heads(width: int) -> int:
    """Design rule 3: h = min(median(factors(w))); for an even count both middle values are medians."""
    f = divisors(width)
    return f[(len(f) - 1) // 2]


def rule_depth(width: int) -> int:
    """Design rule 2: d = floor(log2 w)."""
    return int(math.floor(math.log2(width)))


@dataclass(frozen=True)
class Candidate:
    """An architecture with its parameter count."""

    arch: StudentArch
    params: int

    def to_dict(self) -> dict:
        return {"depth": self.arch.depth, "width": self.arch.width, "heads": self.arch.heads, "params": self.params}


def _band(budget: int, lower: float, upper: float) -> tuple[float, float]:
    return lower * budget, upper * budget


def _widths(space: SpaceConfig) -> list[int]:
    return sorted(set(space.widths)) if space.widths else default_widths(space.min_width, space.max_width)


def _heads_for(width: int, heads: str | tuple[int, ...]) -> list[int]:
    if heads == "rule":
        return [rule_heads(width)]
    if heads == "all":
        return divisors(width)
    return [h for h in sorted(set(heads)) if h > 0 and width % h == 0]


def enumerate_candidates(space: SpaceConfig, geometry: Geometry) -> list[Candidate]:
    """Every (depth, width, heads) of the space with lower*budget <= params <= upper*budget (or the
    space's explicit `architectures`, each at most upper*budget).

    Sorted by params, then width, depth, heads. An empty result is a DseError that says what the
    smallest and largest models of the space are, so the user can move the budget or the band.
    """
    budget = space.budget_params
    lo, hi = _band(budget, space.lower, space.upper)
    if space.architectures:
        return _listed(space, geometry, hi)
    widths = _widths(space)
    if not widths:
        raise DseError(f"no width of the form 2^n or 3*2^n (a multiple of 4) lies in min_width..max_width = "
                       f"{space.min_width}..{space.max_width}; widen that range or list the widths")
    if not isinstance(space.heads, str):
        unused = [h for h in sorted(set(space.heads)) if not any(h > 0 and w % h == 0 for w in widths)]
        if unused:
            raise DseError(f"heads {', '.join(map(str, unused))} {'divides' if len(unused) == 1 else 'divide'} none of "
                           f"the widths {', '.join(map(str, widths))}; heads must divide the width "
                           f"(e.g. heads = [{', '.join(map(str, divisors(widths[0])[1:4]))}] for width {widths[0]})")
    found = []
    for w in widths:
        fits = []  # (depth, params) of this width in the band
        for d in range(space.min_depth, space.max_depth + 1):
            n = count_params(StudentArch(d, w, 1, space.mlp_ratio), geometry)  # heads do not change the count
            if n > hi:
                break
            if n >= lo:
                fits.append((d, n))
        if space.depths == "closest" and fits:  # one depth per width, as the paper's Table 2
            fits = [min(fits, key=lambda dn: (abs(dn[1] - budget), dn[0]))]
        for d, n in fits:
            found.extend(Candidate(StudentArch(d, w, h, space.mlp_ratio), n) for h in _heads_for(w, space.heads))
    if not found:
        raise DseError(_no_fit_message(space, geometry, budget))
    return sorted(found, key=lambda c: (c.params, c.arch.width, c.arch.depth, c.arch.heads))


def _listed(space: SpaceConfig, geometry: Geometry, hi: float) -> list[Candidate]:
    """The space's explicit `architectures`, each of which must fit under upper * budget (a cap: the
    band's lower end does not apply to a list, which may span sizes as the paper's Table 6 does)."""
    found = [Candidate(StudentArch(d, w, h, space.mlp_ratio), count_params(StudentArch(d, w, h, space.mlp_ratio), geometry))
             for d, w, h in space.architectures]
    over = [c for c in found if c.params > hi]
    if over:
        c = over[0]
        raise DseError(f"architecture {c.arch.name} has {c.params:,} parameters, over upper*budget = {int(hi):,} for "
                       f"{geometry.image_size}x{geometry.image_size}x{geometry.channels} images; raise the budget or "
                       "remove it from [space] architectures")
    return sorted(found, key=lambda c: (c.params, c.arch.width, c.arch.depth, c.arch.heads))


def group_heads(candidates: list[Candidate]) -> list[dict]:
    """One row per (depth, width) with every head count of it: {"depth", "width", "heads": [...],
    "params"}, in the candidates' order (heads do not change a DiT's parameter count)."""
    rows: dict[tuple[int, int], dict] = {}
    for c in candidates:
        row = rows.setdefault((c.arch.depth, c.arch.width), {**c.to_dict(), "heads": []})
        row["heads"].append(c.arch.heads)
    return list(rows.values())


def _no_fit_message(space: SpaceConfig, geometry: Geometry, budget: int) -> str:
    sizes = [count_params(StudentArch(d, w, 1, space.mlp_ratio), geometry)
             for w in _widths(space) for d in (space.min_depth, space.max_depth)]
    return (
        f"no architecture fits a budget of {format_count(budget)} ({budget} parameters, band "
        f"{space.lower:g}x-{space.upper:g}x) for {geometry.image_size}x{geometry.image_size}x{geometry.channels} "
        f"images with {geometry.num_classes} classes: the models of this space have {min(sizes):,} to "
        f"{max(sizes):,} parameters; change the budget, the space's widths/depths, or the band (--lower/--upper)"
    )


def propose(
    budget: str | int, geometry: Geometry, *, lower: float = 0.8, upper: float = 1.02, mlp_ratio: float = 4.0,
    widths: list[int] | None = None,
) -> Candidate:
    """The paper's design-rule architecture for a budget (Sec. 3.2, rules 2 and 3).

    For each width w: depth = floor(log2 w), reduced only as far as needed to fit the band (a width
    whose rule depth is already below the band is no candidate); heads = the lower median of the
    divisors of w. Among widths, the one whose depth departs least from floor(log2 w) wins, ties to
    more parameters.
    """
    b = parse_budget(budget)
    lo, hi = _band(b, lower, upper)
    best: tuple[int, int, Candidate] | None = None
    for w in widths or default_widths():
        d0 = rule_depth(w)
        for d in range(d0, 0, -1):
            n = count_params(StudentArch(d, w, 1, mlp_ratio), geometry)
            if n <= hi:
                break
        else:
            continue
        if n < lo:
            continue
        cand = Candidate(StudentArch(d, w, rule_heads(w), mlp_ratio), n)
        key = (d0 - d, -n)
        if best is None or key < best[:2]:
            best = (*key, cand)
    if best is None:
        raise DseError(
            f"no width satisfies the design rules for a budget of {format_count(b)} ({b} parameters) for "
            f"{geometry.image_size}x{geometry.image_size}x{geometry.channels} images: raise the budget or widen the band"
        )
    return best[2]


def design_rule(space: SpaceConfig, geometry: Geometry) -> Candidate | None:
    """The design-rule proposal (`propose`) for the space's budget, band and MLP ratio, or None when
    no width qualifies."""
    budget = space.budget_params
    try:
        return propose(budget, geometry, lower=space.lower, upper=space.upper, mlp_ratio=space.mlp_ratio)
    except DseError:
        return None


@dataclass(frozen=True)
class CandidateTable:
    """The architectures of a space that fit its budget (`dse space`), and the design-rule one among them."""

    space: SpaceConfig
    geometry: Geometry
    candidates: list[Candidate]
    rule: Candidate | None

    def rows(self) -> list[dict]:
        """One row per candidate: depth, width, heads, params and whether it is the design rule's."""
        rule = self.rule.arch if self.rule else None
        return [{**c.to_dict(), "design_rule": c.arch == rule} for c in self.candidates]

    def groups(self) -> list[dict]:
        """One row per (depth, width) with every head count of it (`group_heads`)."""
        return group_heads(self.candidates)


def candidate_table(space: SpaceConfig, geometry: Geometry) -> CandidateTable:
    """The candidates of `space` for `geometry` (`enumerate_candidates`: a DseError when none fit),
    with the design-rule architecture (`design_rule`)."""
    return CandidateTable(space, geometry, enumerate_candidates(space, geometry), design_rule(space, geometry))


def forward_flops(arch: StudentArch, geometry: Geometry) -> int:
    """Floating-point operations (2 per multiply-add) of one image through the student, one step:
    the matmuls of every block (qkv, attention scores and mixing, projection, MLP, adaLN) and of the
    patch embedding and final layer; norms, softmax and activations are left out (a lower bound)."""
    w, t, p, c = arch.width, geometry.num_patches, geometry.patch_size, geometry.channels
    hidden = int(w * arch.mlp_ratio)
    attention = 2 * t * w * 3 * w + 2 * 2 * t * t * w + 2 * t * w * w  # qkv, q k^T and a v, proj
    mlp = 2 * 2 * t * w * hidden
    adaln = 2 * w * 6 * w  # once per image, not per token
    block = attention + mlp + adaln
    embed = 2 * t * (c * p * p) * w + 2 * (FREQUENCY_EMBEDDING_SIZE * w + w * w)
    final = 2 * t * w * p * p * c + 2 * w * 2 * w
    return arch.depth * block + embed + final


def arch_columns(arch: StudentArch, geometry: Geometry) -> dict[str, Any]:
    """The row's columns that describe the student: geometry, architecture and parameter count."""
    g, a = geometry, arch
    return {
        "image_size": g.image_size, "channels": g.channels, "num_classes": g.num_classes, "patch_size": g.patch_size,
        "depth": a.depth, "width": a.width, "heads": a.heads, "mlp_ratio": a.mlp_ratio, "params": count_params(a, g),
    }
