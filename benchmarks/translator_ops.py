"""Operator count of one training step's translator (and compressor): per-layer path vs stacked path.

    python benchmarks/translator_ops.py [--recipe recipes/quickstart.yaml] [--batch 4] [--receiver-len 95]

Builds the recipe's translator for the real pair's cache layout (30 fused receiver layers for the
demo pair) and the three built-in translators plus the span_pool compressor on the same shapes, feeds
them random caches of a quickstart-sized batch, and counts with torch.profiler the ``aten::`` operators
of forward + backward (gradients of every fused K/V given, so the backward is the translator's own).
Three counts: every ``aten::`` event, nested ones included (``all``); the calls made from outside
any other aten operator (``top``: what the Python code and the autograd engine dispatch); and the
``compute`` operators, leaves that are not views (about one kernel launch each on a GPU; the count
the target is judged on). Prints one line per module and, as the last line, the largest stacked /
per-layer compute ratio (target <= 0.1).
The counts do not depend on weights or on the machine; ``--time N`` adds interleaved medians of wall time.
``--device cuda`` runs the modules on the GPU and adds the GPU kernels each path ran (``kernels``: what
the target's "kernel launches" counts there), per-layer, stacked and their ratio.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

from lcf.config import load_recipe, validate_recipe
from lcf.models.kv import KVView, layer_specs
from lcf.pair import build_pair
from lcf.registry import compressors, translators
from lcf.translators.base import PairShapes


def random_view(specs, batch: int, n: int, g: torch.Generator, device: str = "cpu") -> KVView:
    keys, values = [], []
    for s in specs:
        stored = min(n, s.sliding_window - 1) if s.sliding_window else n
        keys.append(torch.randn(batch, s.kv_heads, stored, s.head_dim, generator=g).to(device))
        values.append(torch.randn(batch, s.kv_heads, stored, s.head_dim, generator=g).to(device))
    return KVView(keys, values, n, list(specs))


#: operators that only make views or read metadata: no kernel of their own on a GPU
VIEW_OPS = {
    "aten::view", "aten::_unsafe_view", "aten::reshape", "aten::unsqueeze", "aten::squeeze", "aten::select",
    "aten::slice", "aten::narrow", "aten::transpose", "aten::t", "aten::permute", "aten::expand",
    "aten::as_strided", "aten::alias", "aten::detach", "aten::unbind", "aten::split", "aten::split_with_sizes",
    "aten::chunk", "aten::flatten", "aten::unflatten", "aten::numpy_T", "aten::resolve_conj", "aten::resolve_neg",
    "aten::empty", "aten::empty_like", "aten::empty_strided", "aten::lift_fresh", "aten::result_type",
    "aten::_reshape_alias", "aten::view_as", "aten::expand_as", "aten::is_nonzero", "aten::item",
    "aten::_local_scalar_dense", "aten::contiguous", "aten::to", "aten::_to_copy_noop", "aten::size",
}


def count(fn, cuda: bool = False) -> tuple[int, ...]:
    """(every aten event, top-level aten events, compute leaves) of ``fn()``: compute leaves are aten
    events with no aten child that are not views (:data:`VIEW_OPS`): about one kernel launch each on a GPU.
    ``cuda``: a fourth number, the GPU kernels ``fn()`` ran (memcpy and memset not counted)."""
    with profile(activities=[ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]) as prof:
        fn()
        if cuda:
            torch.cuda.synchronize()
    if cuda:
        kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
                   and "memcpy" not in e.name.lower() and "memset" not in e.name.lower()]
    aten = [e for e in prof.events() if e.name.startswith("aten::")]
    top = [e for e in aten if e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")]
    leaves = [e for e in aten if e.name not in VIEW_OPS
              and not any(c.name.startswith("aten::") for c in e.cpu_children)]
    return (len(aten), len(top), len(leaves), *([len(kernels)] if cuda else []))


def set_path(module, path: str) -> None:
    if not hasattr(module, "stacked"):
        raise SystemExit(f"{type(module).__name__} has no stacked path in this checkout")
    module.stacked = path == "stacked"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="recipes/quickstart.yaml")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--receiver-len", type=int, default=95, help="receiver prompt tokens fused (all but the last)")
    ap.add_argument("--sharer-len", type=int, default=73)
    ap.add_argument("--context-len", type=int, default=300, help="sharer context tokens for span_pool")
    ap.add_argument("--time", type=int, default=0, metavar="N",
                    help="also time forward + backward of each translator, median of N interleaved runs per path")
    ap.add_argument("--only-compressor", action="store_true", help="count span_pool only")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (cuda adds GPU kernel counts)")
    args = ap.parse_args()
    dev, cuda = args.device, args.device.startswith("cuda")
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = validate_recipe(load_recipe(args.recipe))
    pair = build_pair(recipe)
    s_specs, r_specs = layer_specs(pair.sharer.model.config), layer_specs(pair.receiver.model.config)
    shapes = PairShapes(tuple(s_specs), tuple(r_specs), pair.layer_map)
    g = torch.Generator().manual_seed(0)
    b, n = args.batch, args.receiver_len
    s_view, r_view = random_view(s_specs, b, args.sharer_len, g, dev), random_view(r_specs, b, n, g, dev)
    index = torch.randint(0, args.sharer_len, (b, n), generator=g).to(dev)
    mask = (torch.rand(b, n, generator=g) < 0.8).to(dev)

    modules = [(f"{recipe['translator']['type']} (recipe)", translators.build(recipe["translator"], "translator", shapes=shapes))]
    for spec in ({"type": "c2c_projector", "hidden_dim": 64}, {"type": "gated_fusion"}):  # counts ignore widths
        modules.append((spec["type"], translators.build(spec, "translator", shapes=shapes)))
    print(f"pair {recipe.get('pair')}: {len(shapes.fused_layers)} fused receiver layers; batch {b}, receiver "
          f"{n} tokens, sharer {args.sharer_len}; forward + backward, gradients reset to None before each; "
          f"torch {torch.__version__}", flush=True)
    print(f"{'module':<26}{'per-layer: all':>15}{'top':>7}{'compute':>8}{'  stacked: all':>15}{'top':>7}{'compute':>8}"
          f"{'  ratio: all':>13}{'top':>7}{'compute':>8}", flush=True)
    worst = 0.0
    ones: dict[tuple, torch.Tensor] = {}

    def report(name, module, step):
        nonlocal worst
        counts = {}
        for path in ("per_layer", "stacked"):
            set_path(module, path)

            def run():
                module.zero_grad(set_to_none=True)
                edited = [x for x in step() if x.requires_grad and x.numel()]
                # output gradients made once (warm-up), so their fills are not counted as the module's
                for x in edited:
                    if tuple(x.shape) not in ones:
                        ones[tuple(x.shape)] = torch.ones(x.shape, device=x.device)
                torch.autograd.backward(edited, [ones[tuple(x.shape)] for x in edited])
            run()  # warm-up
            module.zero_grad(set_to_none=True)
            counts[path] = count(run, cuda)
        ratio = [s / p for s, p in zip(counts["stacked"], counts["per_layer"])]
        worst = max(worst, ratio[2])
        times = {"per_layer": [], "stacked": []}
        for _ in range(args.time):  # interleaved: drift of a shared CPU hits both paths alike
            for path in times:
                set_path(module, path)
                if cuda:
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                run()
                if cuda:
                    torch.cuda.synchronize()
                times[path].append(time.perf_counter() - t0)
        timing = (f"   fwd+bwd ms per-layer {statistics.median(times['per_layer']) * 1e3:.1f}, stacked "
                  f"{statistics.median(times['stacked']) * 1e3:.1f}" if args.time else "")
        print(f"{name:<26}" + "".join(f"{c:>{w}}" for c, w in zip(counts["per_layer"], (15, 7, 8)))
              + "".join(f"{c:>{w}}" for c, w in zip(counts["stacked"], (15, 7, 8)))
              + "".join(f"{r:>{w}.3f}" for r, w in zip(ratio, (13, 7, 8))) + timing
              + (f"   GPU kernels per-layer {counts['per_layer'][3]}, stacked {counts['stacked'][3]}, "
                 f"ratio {ratio[3]:.3f}" if cuda else ""), flush=True)

    for name, tr in [] if args.only_compressor else modules:
        tr.to(dev).train()
        report(name, tr, lambda tr=tr: [*(o := tr.fuse(s_view, r_view, index, mask)).keys, *o.values])
    comp = compressors.build({"type": "span_pool"}, "compressor", shapes=shapes).to(dev).train()
    if hasattr(comp, "stacked"):
        c_view = random_view(s_specs, b, args.context_len, g, dev)
        span_ids = (torch.arange(args.context_len) // 64).expand(b, -1).clone().to(dev)
        report(f"span_pool ({args.context_len} ctx)", comp,
               lambda: [*(o := comp(c_view, span_ids)).keys, *o.values])
    else:
        print("span_pool: no stacked path in this checkout (not counted)", flush=True)
    print(f"largest stacked / per-layer compute-operator ratio: {worst:.3f} (target <= 0.1)", flush=True)


if __name__ == "__main__":
    main()
