"""The `prune` stage: structured channel pruning on torch-pruning's dependency graph (DepGraph).

How a step works:

1. torch-pruning traces the model on a calibration input and builds its dependency graph:
   which output channels, input channels, norms and PReLUs must lose the same channels
   (residual adds, concats and splits included).
2. The graph is cut into *channel groups*: each channel of each Conv/Linear belongs to exactly
   one group of channels that must go together. (torch-pruning's own pruner roots groups at
   whole layers and skips a layer whose channels another group touched first, so a layer
   whose output is split, like IMDN's ``c1``, would keep most of its channels; here groups
   are found channel by channel.)
3. Each group is scored by the recipe's importance and pruned by the ratio; a group that spans
   several layers' channels side by side (the parts of a concat) loses the ratio of each part,
   so no layer is emptied. ``lamp`` instead ranks channels across all groups (layer-adaptive,
   at most 90% of a part per step). ``iterative_steps`` reach the ratio in equal steps, with the
   importance re-scored each step; ``target_macs`` repeats steps until the MACs are low enough.
4. The chosen indices are gathered per layer and each layer is cut once (torch-pruning's
   pruning functions), then the model must still run (see below).

Importance: ``l1``/``l2`` weight magnitude of the whole group; ``taylor`` |w·∂L/∂w| with L the
MSE between the model's output and the teacher's on calibration inputs (plus a small noise on
the target, else L and its gradients are 0 at step one); ``bn_scale`` |γ| of the BatchNorm,
affine InstanceNorm or GroupNorm on the channels (L1 magnitude where there is none, noted);
``lamp`` LAMP-normalised L2 magnitude, ranked globally.

Generator-aware rules, each a protection with its reason in ``info["protected"]``:

- a group whose channels reach the model output is never pruned (the output layer keeps its
  channels; it may lose input channels);
- a conv feeding PixelShuffle (DepthToSpace) is pruned in whole blocks of r² channels, one
  output channel of the shuffle each (PixelUnshuffle likewise); a shuffle of unknown factor
  protects its producers;
- GroupNorm keeps its groups whole: each group of a GroupNorm loses the same number of
  channels, so widths stay multiples of ``num_groups``;
- grouped (non-depthwise) convolutions, attention (heads stay whole), unwrapped parameters,
  and ops that move channels in ways torch-pruning does not model (permute, channel shuffle,
  gather ...) protect their group;
- ``ignore`` globs freeze the named layers completely (no input or output channel changes);
- after every step the model must still run on a calibration input and give an output of the
  original shape; if not, each group is tried alone, the ones that break the model are
  protected, and pruning starts over (``info["fallback"]`` says so).

Modules whose forward reads channel counts from plain attributes must derive them from their
layers (as IMDN's blocks do), be known to `models.load.sync_width_attributes` (diffusers'
Upsample2D/Downsample2D/ResnetBlock2D), or the forward check protects them.
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import logging
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import RecipeError
from ..models.load import SPANDREL, UNPRUNED_SHAPES, sync_width_attributes
from ..models.inputs import call, main, parts
from ..models.spec import Generator
from ..recipe import Prune
from ..validate import cost
from .base import StageContext, StageResult

log = logging.getLogger(__name__)

MAX_STEPS = 60  # target_macs: give up after this many steps
TAYLOR_SAMPLES = 8  # calibration inputs per Taylor gradient estimate
TAYLOR_NOISE = 0.01  # target noise (fraction of the output range) that makes step one informative
GLOBAL_MAX_RATIO = 0.9  # lamp (global ranking): no group loses more than this fraction per step
# grad_fn names (lower case, substrings) of ops that move channels in ways DepGraph does not model
CHANNEL_MOVERS = ("channelshuffle", "permute", "transpose", "roll", "repeat", "gather", "index", "im2col",
                  "col2im", "unfold", "flip")
OUTPUT_REASON = "feeds the model output: its output channels are the image's channels"


class PruneFailed(Exception):
    """A pruning step produced a model that does not run (internal: triggers the fallback)."""


@dataclass
class _Group:
    """One set of channels that must be pruned together, rooted at some Conv/Linear."""

    root: str
    size: int  # channels of the root in this group
    group: Any  # torch_pruning Group; root_idxs rewritten to positions 0..size-1
    units: list[list[int]] = field(default_factory=list)  # positions pruned as one (PixelShuffle blocks)
    segments: list[list[int]] = field(default_factory=list)  # units held by the same layers (concat parts)
    segment_keys: list[tuple[str, ...]] = field(default_factory=list)  # those layers (stable across steps)
    chunks: list[int] | None = None  # GroupNorm group of each unit, or None
    layers: list[str] = field(default_factory=list)  # real layers whose output channels the group holds
    reason: str | None = None  # why the group is protected, or None


def _tp():
    import torch_pruning as tp

    return tp


# --- shuffles --------------------------------------------------------------------------------------


class _Blocks:
    """Index mapping c -> [c·n, (c+1)·n) (one channel to its block).

    Both mappings return sorted, duplicate-free lists: torch-pruning stops walking a cycle
    (producer -> shuffle -> producer) only when it meets the very same index list again."""

    def __init__(self, n: int):
        self.n = n

    def __call__(self, idxs: list) -> list:
        H = _tp()._helpers._HybridIndex
        return sorted({H(idx=i.idx * self.n + k, root_idx=i.root_idx) for i in idxs for k in range(self.n)})


class _Collapse:
    """Index mapping i -> i // n (a block to its channel; duplicates kept so roots stay tied)."""

    def __init__(self, n: int):
        self.n = n

    def __call__(self, idxs: list) -> list:
        H = _tp()._helpers._HybridIndex
        return sorted({H(idx=i.idx // self.n, root_idx=i.root_idx) for i in idxs})


def _shuffle_mappings(dg: Any) -> set[Any]:
    """Teach the graph PixelShuffle / PixelUnshuffle (it treats them as element-wise ops).

    A shuffle node's indices are those of its output. Returns the shuffle nodes whose factor
    could not be read (groups through them are protected)."""
    unknown = set()
    for node in dg.module2node.values():
        name = node.grad_fn.name().lower() if node.grad_fn is not None and hasattr(node.grad_fn, "name") else ""
        if "pixelshuffle" in name:
            r = getattr(node.grad_fn, "_saved_upscale_factor", None)
            up = True
        elif "pixelunshuffle" in name:
            r = getattr(node.grad_fn, "_saved_downscale_factor", None)
            up = False
        else:
            continue
        if not isinstance(r, int) or r < 1:
            unknown.add(node)
            continue
        n = r * r
        into, back = (_Collapse(n), _Blocks(n)) if up else (_Blocks(n), _Collapse(n))
        for src in node.inputs:
            for dep in src.dependencies:
                if dep.target is node:
                    dep.index_mapping[1] = into  # producer channels -> shuffle output channels
        for dep in node.dependencies:
            if dep.target in node.inputs:
                dep.index_mapping[1] = back  # shuffle output channels -> producer channels
    return unknown


# --- groups ----------------------------------------------------------------------------------------


class _UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, a: int) -> int:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: int, b: int) -> None:
        self.parent[self.find(a)] = self.find(b)


def _op_name(node: Any) -> str:
    g = node.grad_fn
    return g.name() if g is not None and hasattr(g, "name") else type(node.module).__name__


@contextlib.contextmanager
def _out_of_place(module: nn.Module) -> Iterator[None]:
    """Trace with in-place activations turned off: an in-place ReLU after a layer whose output
    is a view (InstanceNorm's) replaces the output's grad_fn, and the layer drops out of the graph."""
    flipped = [m for m in module.modules() if getattr(m, "inplace", False) is True]
    for m in flipped:
        m.inplace = False
    try:
        yield
    finally:
        for m in flipped:
            m.inplace = True


class _Graph:
    """The dependency graph of the current model and its channel groups."""

    def __init__(self, module: nn.Module, example: torch.Tensor, *, frozen: dict[str, str],
                 keep_out: dict[str, str], only_roots: set[str] | None = None):
        tp = _tp()
        self.tp = tp
        self.module = module
        with warnings.catch_warnings(), torch.enable_grad(), _out_of_place(module):
            warnings.simplefilter("ignore")
            self.dg = tp.DependencyGraph().build_dependency(module, example_inputs=parts(example), verbose=False)
        self.unknown_shuffles = _shuffle_mappings(self.dg)
        self.names = {m: n for n, m in module.named_modules()}
        self.frozen = frozen
        self.keep_out = keep_out
        self.only_roots = only_roots
        self.groups = list(self._partition())

    def _is_layer(self, m: Any) -> bool:
        return isinstance(m, nn.Module) and m in self.names

    def _partition(self) -> Iterator[_Group]:
        dg = self.dg
        covered: dict[nn.Module, set[int]] = {}
        for m in list(dg.module2node):
            if not isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) or not self._is_layer(m):
                continue
            pruner = dg.get_pruner_of_module(m)
            n_out = dg.get_out_channels(m)
            if pruner is None or not n_out:
                continue
            free = [i for i in range(n_out) if i not in covered.get(m, set())]
            if not free:
                continue
            group = dg.get_pruning_group(m, pruner.prune_out_channels, free)
            pos = {c: k for k, c in enumerate(free)}
            for item in group:  # positions instead of channel ids; sorted by index (Taylor sorts idxs in place)
                pairs = sorted(zip(item.idxs, (pos[r] for r in item.root_idxs)))
                item.idxs[:] = [i for i, _ in pairs]
                item.root_idxs = [r for _, r in pairs]
            g = _Group(root=self.names[m], size=len(free), group=group)
            for dep, idxs in group:
                t = dep.target.module
                if self._is_layer(t) and dg.is_out_channel_pruning_fn(dep.handler):
                    covered.setdefault(t, set()).update(idxs)
                    if isinstance(t, (nn.modules.conv._ConvNd, nn.Linear)) and self.names[t] not in g.layers:
                        g.layers.append(self.names[t])
            g.reason = self._protection(g)
            if g.reason is None:
                self._units(g)
            if g.reason is None and self.only_roots is not None and g.root not in self.only_roots:
                g.reason = "not tried (isolating the groups that break the model)"
            yield g

    def _protection(self, g: _Group) -> str | None:
        tp, dg = self.tp, self.dg
        for dep, _ in g.group:
            t = dep.target
            if isinstance(t.module, tp.ops._OutputOp):
                return OUTPUT_REASON
            if t.type == tp.ops.OPTYPE.PARAMETER:
                param = dg._module2name.get(t.module, "?")
                return f"its channels reach an unwrapped parameter ({param}) that torch-pruning cannot resize safely"
            if t in self.unknown_shuffles:
                return "its channels pass through a PixelShuffle/PixelUnshuffle whose factor could not be read"
            if not self._is_layer(t.module):
                if not t.inputs:  # an op on a layer's own weights (InstanceNorm repeats its affine ones)
                    continue
                op = _op_name(t).lower()
                mover = next((w for w in CHANNEL_MOVERS if w in op), None)
                if mover is not None:
                    return (f"its channels pass through {_op_name(t)}, whose channel mapping torch-pruning "
                            "does not model")
                continue
            name = self.names[t.module]
            if not t.outputs and dg.is_out_channel_pruning_fn(dep.handler):
                return OUTPUT_REASON  # the layer's output is the model's output
            if name in self.frozen:
                return self.frozen[name]
            if name in self.keep_out and dg.is_out_channel_pruning_fn(dep.handler):
                return self.keep_out[name]
            m = t.module
            if isinstance(m, nn.MultiheadAttention):
                return f"attention {name}: its heads stay whole"
            depthwise = m.groups == m.in_channels == m.out_channels if isinstance(m, nn.modules.conv._ConvNd) else False
            if isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1 and not depthwise:
                return f"grouped convolution {name} (groups={m.groups})"
        return None

    def _units(self, g: _Group) -> None:
        """Tie positions that one channel downstream depends on (shuffle blocks); chunk by GroupNorm."""
        uf = _UnionFind(g.size)
        gn_chunks: list[dict[int, int]] = []
        for item in g.group:
            dep, idxs, roots = item.dep, item.idxs, item.root_idxs
            first: dict[int, int] = {}
            for i, r in zip(idxs, roots):
                if i in first:
                    uf.union(first[i], r)
                else:
                    first[i] = r
            m = dep.target.module
            if isinstance(m, nn.GroupNorm) and m.num_groups > 1:
                per = m.num_channels // m.num_groups
                gn_chunks.append({r: i // per for i, r in zip(idxs, roots)})
        by_root: dict[int, list[int]] = {}
        for p in range(g.size):
            by_root.setdefault(uf.find(p), []).append(p)
        g.units = sorted(by_root.values())
        if len({len(u) for u in g.units}) > 1:
            g.reason = "its channels are tied in blocks of different sizes"
            return
        # segments: units whose channels live in the same layers (each part of a concat is one),
        # pruned by the ratio each, so that no layer loses all its channels
        holders: dict[int, set[str]] = {p: set() for p in range(g.size)}
        for item in g.group:
            t = item.dep.target.module
            if self._is_layer(t) and self.dg.is_out_channel_pruning_fn(item.dep.handler):
                for r in item.root_idxs:
                    holders[r].add(self.names[t])
        seg: dict[frozenset[str], list[int]] = {}
        for k, u in enumerate(g.units):
            seg.setdefault(frozenset().union(*(holders[p] for p in u)), []).append(k)
        g.segments = list(seg.values())
        g.segment_keys = [(g.root, *sorted(k)) for k in seg]
        if not gn_chunks:
            return
        g.segments = [list(range(len(g.units)))]  # GroupNorm groups decide
        g.segment_keys = [(g.root, "groupnorm")]
        chunks = []
        for u in g.units:
            ids = {tuple(c.get(p) for c in gn_chunks) for p in u}
            if len(ids) != 1 or None in next(iter(ids)):
                g.reason = "a GroupNorm group would not stay whole"
                return
            chunks.append(next(iter(ids)))
        labels = {c: k for k, c in enumerate(sorted(set(chunks)))}
        g.chunks = [labels[c] for c in chunks]
        sizes = {g.chunks.count(k) for k in labels.values()}
        if len(sizes) != 1:
            g.reason = "its GroupNorm groups hold different numbers of channels"


# --- importance --------------------------------------------------------------------------------------


class _NormScale:
    """``bn_scale``: |γ| of the BatchNorm / affine InstanceNorm / GroupNorm on the channels;
    groups without one are scored by the L1 magnitude of their weights (and counted)."""

    def __init__(self) -> None:
        tp = _tp()
        self.fallback = tp.importance.MagnitudeImportance(p=1)
        f = tp.pruner.function
        self.fns = {f.prune_batchnorm_out_channels, f.prune_instancenorm_out_channels, f.prune_groupnorm_out_channels}
        self.without_norm = 0

    @torch.no_grad()
    def __call__(self, group: Any) -> torch.Tensor | None:
        imps, roots = [], []
        for item in group:
            m = item.dep.target.module
            if item.dep.handler in self.fns and getattr(m, "affine", False) and m.weight is not None:
                imps.append(m.weight.detach()[item.idxs].abs())
                roots.append(item.root_idxs)
        if not imps:
            self.without_norm += 1
            return self.fallback(group)
        out = torch.zeros(1 + max(group[0].root_idxs))
        for imp, r in zip(imps, roots):
            out.scatter_add_(0, torch.tensor(r), imp.float())
        return out / max(float(out.mean()), 1e-12)


def _importance(kind: str) -> Any:
    tp = _tp()
    if kind == "l1":
        return tp.importance.MagnitudeImportance(p=1)
    if kind == "l2":
        return tp.importance.MagnitudeImportance(p=2)
    if kind == "lamp":
        return tp.importance.LAMPImportance(p=2)
    if kind == "taylor":
        return tp.importance.TaylorImportance()
    if kind == "bn_scale":
        return _NormScale()
    raise RecipeError(f"prune.importance: unknown {kind!r}")


def _taylor_gradients(module: nn.Module, teacher: nn.Module, calibration: list[torch.Tensor],
                      out_range: tuple[float, float], seed: int) -> None:
    """Gradients of the MSE distance between the model's output and the teacher's.

    At step one the model is the teacher, the distance is 0 and so is every gradient; a small
    Gaussian noise on the target (``TAYLOR_NOISE`` of the output range, seeded) makes the
    first-order term the output's sensitivity along random directions, whose expected square
    is the squared output change when a channel goes. Later steps see the real distance."""
    for p in module.parameters():
        p.grad = None
    g = torch.Generator().manual_seed(seed)
    sigma = TAYLOR_NOISE * (out_range[1] - out_range[0])
    xs = calibration[:TAYLOR_SAMPLES]
    with torch.enable_grad():
        for x in xs:
            with torch.no_grad():
                target = call(teacher, x)
                target = target + sigma * torch.randn(target.shape, generator=g)
            loss = F.mse_loss(call(module, x), target) / len(xs)
            loss.backward()


# --- selection ----------------------------------------------------------------------------------------


def _round_keep(k: int, n: int, unit: int, mult: int, round_to: int | None) -> int:
    """Units kept (of ``n``, ≥ 1) so that kept channels (k·unit·mult) are a multiple of round_to."""
    k = max(1, min(n, k))
    if not round_to or (k * unit * mult) % round_to == 0:
        return k
    for j in range(k, 0, -1):
        if (j * unit * mult) % round_to == 0:
            return j
    for j in range(k + 1, n + 1):
        if (j * unit * mult) % round_to == 0:
            return j
    return n


def _unit_scores(imp: torch.Tensor, units: list[list[int]]) -> torch.Tensor:
    imp = imp.detach().float().cpu()
    return torch.stack([imp[u].mean() for u in units])


def _select_local(g: _Group, imp: torch.Tensor, wanted: Callable[[tuple[str, ...], int], int],
                  round_to: int | None) -> list[int]:
    """Positions to prune; ``wanted(segment_key, units)`` says how many units of a segment stay."""
    scores = _unit_scores(imp, g.units)
    unit = len(g.units[0])
    if g.chunks is None:
        drop = []
        for key, members in zip(g.segment_keys, g.segments):
            n = len(members)
            k = _round_keep(wanted(key, n), n, unit, 1, round_to)
            order = torch.argsort(scores[members]).tolist()
            drop += [members[j] for j in order[: n - k]]
    else:
        n_chunks = 1 + max(g.chunks)
        per = len(g.units) // n_chunks
        k = _round_keep(wanted(g.segment_keys[0], len(g.units)) // n_chunks, per, unit, n_chunks, round_to)
        drop = []
        for c in range(n_chunks):
            members = [i for i, ch in enumerate(g.chunks) if ch == c]
            order = torch.argsort(scores[members]).tolist()
            drop += [members[j] for j in order[: per - k]]
    return sorted(p for u in drop for p in g.units[u])


def _select_global(groups: list[tuple[_Group, torch.Tensor]], keep: float) -> dict[int, list[int]]:
    """lamp: rank units of all (unchunked) groups together; prune the lowest until ``keep`` of the
    channels stay, no group losing more than GLOBAL_MAX_RATIO or its last unit."""
    entries = []
    total = 0
    segment_of: dict[tuple[int, int], int] = {}
    for gi, (g, imp) in enumerate(groups):
        scores = _unit_scores(imp, g.units)
        total += g.size
        for si, members in enumerate(g.segments):
            for u in members:
                segment_of[(gi, u)] = si
        for u, s in enumerate(scores.tolist()):
            entries.append((s, gi, u))
    entries.sort()
    budget = total - math.floor(total * keep + 1e-9)
    dropped: dict[int, list[int]] = {}
    count: dict[tuple[int, int], int] = {}
    removed = 0
    for s, gi, u in entries:
        if removed >= budget:
            break
        g = groups[gi][0]
        si = segment_of[(gi, u)]
        n = len(g.segments[si])
        done = count.get((gi, si), 0) + 1
        if done >= n or done > GLOBAL_MAX_RATIO * n:
            continue
        count[(gi, si)] = done
        dropped.setdefault(gi, []).append(u)
        removed += len(g.units[u])
    return {gi: sorted(p for u in us for p in groups[gi][0].units[u]) for gi, us in dropped.items() if us}


# --- applying -----------------------------------------------------------------------------------------


def _apply(graph: _Graph, selections: list[tuple[_Group, list[int]]]) -> int:
    """Prune the selected positions of every group at once (indices of the current model).

    Groups may share a layer (IMDN's c1 feeds a split), so all indices are gathered per
    (layer, pruning function) first and each layer is cut once."""
    todo: dict[tuple[int, Any], tuple[Any, set[int]]] = {}
    removed = 0
    for g, positions in selections:
        if not positions:
            continue
        chosen = set(positions)
        removed += len(chosen)
        for item in g.group:
            t = item.dep.target.module
            if not graph._is_layer(t):
                continue
            idxs = {i for i, r in zip(item.idxs, item.root_idxs) if r in chosen}
            if not idxs:
                continue
            key = (id(t), item.dep.handler)
            if key not in todo:
                todo[key] = (item.dep, set())
            todo[key][1].update(idxs)
    for dep, idxs in todo.values():
        dep(sorted(idxs))
    sync_width_attributes(graph.module)
    return removed


# --- the stage ----------------------------------------------------------------------------------------


def _check_forward(module: nn.Module, x: torch.Tensor, shape: torch.Size) -> None:
    try:
        with torch.no_grad():
            y = call(module, x)
    except Exception as e:  # noqa: BLE001 - any failure of the pruned forward is what we guard against
        raise PruneFailed(f"forward failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}") from e
    if not isinstance(y, torch.Tensor) or y.shape != shape:
        got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise PruneFailed(f"output shape changed: {got} instead of {tuple(shape)}")
    if not torch.isfinite(y).all():
        raise PruneFailed("output is not finite")


def _match_ignores(module: nn.Module, patterns: list[str]) -> dict[str, str]:
    names = [n for n, _ in module.named_modules() if n]
    frozen: dict[str, str] = {}
    unused = []
    for pat in patterns:
        hit = [n for n in names if fnmatch.fnmatchcase(n, pat)]
        if not hit:
            unused.append(pat)
        for n in hit:
            for sub in names:  # a container freezes everything inside it
                if sub == n or sub.startswith(n + "."):
                    frozen.setdefault(sub, f"ignored by the recipe (prune.ignore {pat!r} freezes {sub})")
    if unused:
        raise RecipeError(
            f"prune.ignore: {', '.join(map(repr, unused))} match no layer of the model; "
            f"layer names look like {', '.join(names[:4])}"
        )
    return frozen


@dataclass
class _Run:
    module: nn.Module
    steps: int = 0
    protected: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    macs: int = 0


class _Session:
    """One pruning attempt on a copy of the model, with a given set of protections."""

    def __init__(self, generator: Generator, ctx: StageContext, cfg: Prune, *, frozen: dict[str, str],
                 keep_out: dict[str, str], only_roots: set[str] | None = None):
        self.cfg, self.ctx = cfg, ctx
        self.x = ctx.inputs.calibration[0]
        self.frozen, self.keep_out, self.only_roots = frozen, keep_out, only_roots
        self.run = _Run(copy.deepcopy(generator.module).eval())
        for p in self.run.module.parameters():
            p.requires_grad_(True)
        with torch.no_grad():
            self.shape = call(ctx.teacher.module, self.x).shape
        self.importance = _importance(cfg.importance)
        self.out_range = generator.spec.output_range
        self.initial: dict[tuple[str, ...], int] = {}  # units of each segment at its first step

    def graph(self) -> _Graph:
        return _Graph(self.run.module, self.x, frozen=self.frozen, keep_out=self.keep_out, only_roots=self.only_roots)

    def step(self, keep: float, *, of_initial: float | None = None) -> int:
        """Prune every unprotected group to about ``keep`` of its channels, or, with
        ``of_initial``, to that fraction of the channels it had before the first step.
        Returns the channels removed."""
        def wanted(key: tuple[str, ...], n: int) -> int:
            first = self.initial.setdefault(key, n)
            if of_initial is not None:
                return min(n, math.floor(first * of_initial + 1e-9))
            return math.floor(n * keep + 1e-9)

        graph = self.graph()
        for g in graph.groups:
            if g.reason is not None:
                for name in g.layers or [g.root]:
                    self.run.protected.setdefault(name, g.reason)
        live = [g for g in graph.groups if g.reason is None and len(g.units) > 1]
        if not live:
            return 0
        if self.cfg.importance == "taylor":
            _taylor_gradients(self.run.module, self.ctx.teacher.module, self.ctx.inputs.calibration,
                              self.out_range, seed=self.run.steps)
        scored = []
        for g in live:
            imp = self.importance(g.group)
            if imp is None or len(imp) != g.size or not torch.isfinite(imp).all():
                imp = _tp().importance.MagnitudeImportance(p=2)(g.group)
            scored.append((g, imp))
        if self.cfg.importance == "lamp":
            unchunked = [(g, imp) for g, imp in scored if g.chunks is None]
            picks = _select_global(unchunked, keep)
            selections = [(g, picks.get(i, [])) for i, (g, _) in enumerate(unchunked)]
            selections += [(g, _select_local(g, imp, wanted, self.cfg.round_to))
                           for g, imp in scored if g.chunks is not None]
        else:
            selections = [(g, _select_local(g, imp, wanted, self.cfg.round_to)) for g, imp in scored]
        removed = _apply(graph, selections)
        if self.cfg.importance == "taylor":
            for p in self.run.module.parameters():
                p.grad = None
        self.run.steps += 1
        _check_forward(self.run.module, self.x, self.shape)
        return removed

    def prune(self, macs0: int) -> _Run:
        cfg = self.cfg
        if cfg.target_macs is not None:
            target = cfg.target_macs * macs0
            macs = macs0
            while macs > target and self.run.steps < MAX_STEPS:
                left = max(1, cfg.iterative_steps - self.run.steps)
                keep = min(0.98, (target / macs) ** (1.0 / (2 * left)))
                if self.step(keep) == 0:
                    self.run.notes.append(
                        f"target_macs {cfg.target_macs} not reached: nothing left to prune after "
                        f"{self.run.steps} steps (MACs at {macs / macs0:.3f} of the original)"
                    )
                    break
                macs = cost.macs(self.run.module, self.x)
            else:
                if macs > target:
                    self.run.notes.append(f"target_macs {cfg.target_macs} not reached in {MAX_STEPS} steps")
            self.run.macs = macs
        else:
            ratio = float(cfg.ratio if cfg.ratio is not None else 0.5)
            s = cfg.iterative_steps
            for k in range(1, s + 1):
                keep = (1 - ratio * k / s) / (1 - ratio * (k - 1) / s)
                self.step(keep, of_initial=1 - ratio * k / s)
            self.run.macs = cost.macs(self.run.module, self.x)
        if cfg.importance == "bn_scale" and isinstance(self.importance, _NormScale) and self.importance.without_norm:
            self.run.notes.append(
                f"bn_scale: {self.importance.without_norm} channel group(s) have no norm scale; "
                "they were scored by the L1 magnitude of their weights"
            )
        return self.run


def _isolate(generator: Generator, ctx: StageContext, cfg: Prune, frozen: dict[str, str],
             keep_out: dict[str, str]) -> dict[str, str]:
    """Try each prunable group alone (one step at the recipe's ratio); the roots whose pruning
    breaks the model, with the error."""
    probe = _Session(generator, ctx, cfg, frozen=frozen, keep_out=keep_out)
    roots = [g.root for g in probe.graph().groups if g.reason is None and len(g.units) > 1]
    keep = 1 - float(cfg.ratio if cfg.ratio is not None else 0.5)
    bad: dict[str, str] = {}
    for root in roots:
        s = _Session(generator, ctx, cfg.model_copy(update={"importance": "l2"}), frozen=frozen,
                     keep_out=keep_out, only_roots={root})
        try:
            s.step(keep)
        except Exception as e:  # noqa: BLE001 - any failure marks the group as unsafe
            bad[root] = f"pruning its channel group broke the model ({str(e).splitlines()[0][:160]}): protected"
    return bad


def _widths(original: nn.Module, pruned: nn.Module) -> dict[str, list[int]]:
    """name -> new shape of the weight (or running mean) of every layer whose shapes changed."""
    old = {k: tuple(v.shape) for k, v in original.state_dict().items()}
    out: dict[str, list[int]] = {}
    for name, m in pruned.named_modules():
        own = dict(m.named_parameters(recurse=False)) | dict(m.named_buffers(recurse=False))
        prefix = f"{name}." if name else ""
        changed = [k for k, t in own.items() if t is not None and old.get(prefix + k) not in (None, tuple(t.shape))]
        if changed:
            key = next((k for k in ("weight", "running_mean") if k in own and own[k] is not None), changed[0])
            out[name] = list(own[key].shape)
    return out


def run(generator: Generator, ctx: StageContext, cfg: Prune, *, out: Path | None = None) -> StageResult:
    """Prune a copy of ``generator`` (the teacher and the input are left alone).

    ``info`` holds params and MACs before and after (at the first calibration input's shape),
    the steps taken, the protected layers with their reasons, and notes (fallbacks, targets
    not reached)."""
    del out  # a torch stage: the pipeline exports the result
    x = ctx.inputs.calibration[0]
    base = generator.module.eval()
    params0, macs0 = cost.params(base), cost.macs(base, x)
    frozen = _match_ignores(base, list(cfg.ignore))
    keep_out: dict[str, str] = {}
    fallback = None
    try:
        result = _Session(generator, ctx, cfg, frozen=frozen, keep_out=keep_out).prune(macs0)
    except Exception as e:  # noqa: BLE001 - never crash: protect what breaks and start over
        first = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        log.warning("prune: %s; trying each channel group alone to find the unsafe ones", first)
        try:
            bad = _isolate(generator, ctx, cfg, frozen, keep_out)
            keep_out.update(bad)
            result = _Session(generator, ctx, cfg, frozen=frozen, keep_out=keep_out).prune(macs0)
            fallback = f"the first attempt failed ({first}); protected {len(bad)} group(s) that broke the model alone"
        except Exception as e2:  # noqa: BLE001
            second = f"{type(e2).__name__}: {str(e2).splitlines()[0][:200] if str(e2) else ''}"
            log.warning("prune: %s; the model is left unpruned", second)
            result = _Run(copy.deepcopy(base).eval(), macs=macs0)
            result.protected = {"*": f"pruning failed ({first}; then {second}): the model is left unpruned"}
            fallback = result.protected["*"]
    module = result.module.eval()
    changed = _widths(base, module)
    kwargs = dict(generator.kwargs)
    if generator.arch == SPANDREL and changed:
        old = {k: list(v.shape) for k, v in base.state_dict().items()}
        now = module.state_dict()
        unpruned = {k: s for k, s in old.items() if list(now[k].shape) != s}
        kwargs[UNPRUNED_SHAPES] = {**unpruned, **kwargs.get(UNPRUNED_SHAPES, {})}
    widths = {**generator.widths, **changed}
    params1, macs1 = cost.params(module), result.macs or cost.macs(module, x)
    protected = [{"layer": k, "reason": v} for k, v in sorted(result.protected.items())]
    info: dict[str, Any] = {
        "importance": cfg.importance,
        "ratio": cfg.ratio if cfg.target_macs is None else None,
        "target_macs": cfg.target_macs,
        "ranking": "global (layer-adaptive)" if cfg.importance == "lamp" else "per channel group",
        "steps": result.steps,
        "input_shape": list(main(x).shape),
        "params_before": params0,
        "params_after": params1,
        "macs_before": macs0,
        "macs_after": macs1,
        "macs_factor": round(macs0 / macs1, 3) if macs1 else None,
        "pruned_layers": sorted(changed),
        "protected": protected,
        "notes": result.notes,
        "fallback": fallback,
    }
    for p in protected:
        log.info("prune: %s protected: %s", p["layer"], p["reason"])
    for note in result.notes:
        log.warning("prune: %s", note)
    log.info("prune: params %d -> %d, MACs %d -> %d (%.2fx fewer)", params0, params1, macs0, macs1,
             macs0 / max(macs1, 1))
    pruned = Generator(module, generator.spec, generator.arch, kwargs, widths, generator.source)
    return StageResult(pruned, None, "fp32", info)
