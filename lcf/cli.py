"""The ``lcf`` command line.

    lcf list                              registered components and model/pair cards
    lcf validate RECIPE... [key=value]    check recipes without loading any model
    lcf models prepare NAME... | --all    convert pip GGUF models into the safetensors cache once
    lcf inspect RECIPE [key=value]        KV shapes, layer map and token alignment of a recipe's pair
    lcf train RECIPE [key=value] [--resume]
    lcf train-lora RECIPE [key=value]     LoRA-tuned receiver control (same data, steps, ~parameters)
    lcf export RUN_OR_CKPT OUT_DIR        standalone adapter: adapter.safetensors + adapter_config.json
    lcf demo [RECIPE] [key=value]         train -> export -> runtime -> answers -> comparison table
    lcf eval ADAPTER|RUN|RECIPE... --tasks T... [--limit N] --out DIR   adapters vs baselines and controls
    lcf send ADAPTER --context TEXT|@FILE [--out MSG] [--quantize int8]   cross-context: context -> latent message
    lcf receive ADAPTER MSG --question TEXT             cross-context: latent message + question -> answer
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from lcf.errors import LCFError

#: `lcf eval --systems` choices (kept here so that `lcf --help` needs no torch import)
SYSTEM_CHOICES = ("receiver", "sharer", "text", "lora", "adapter", "zero", "mismatched")
DEFAULT_SYSTEMS = SYSTEM_CHOICES


def _console():
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 120)


def cmd_list(args) -> int:
    from rich.table import Table

    from lcf import cards
    from lcf.registry import REGISTRIES

    con = _console()
    table = Table(title="registered components")
    table.add_column("kind")
    table.add_column("names")
    for kind, reg in REGISTRIES.items():
        table.add_row(kind, ", ".join(reg.names()) or "-")
    con.print(table)

    from lcf.models.loading import is_prepared

    models = Table(title="model cards")
    for col in ("name", "source", "layers", "kv heads x dim", "vocab", "chat template", "prepared"):
        models.add_column(col)
    for name in cards.model_card_names():
        c = cards.model_card(name)
        src = c.source.repo or c.source.path or f"pip {c.source.package}"
        prepared = "yes" if is_prepared(c) else ("no" if c.source.kind == "pip_gguf" else "n/a")
        models.add_row(name, src, str(c.num_layers), f"{c.num_kv_heads} x {c.head_dim}", str(c.vocab_size),
                       "yes" if c.chat_template else "no", prepared)
    con.print(models)
    pairs = Table(title="pair cards")
    for col in ("name", "sharer", "receiver", "layer map", "token alignment"):
        pairs.add_column(col)
    for name in cards.pair_card_names():
        p = cards.pair_card(name)
        pairs.add_row(name, p.sharer, p.receiver, str(p.layer_map.get("type")), str(p.token_alignment.get("type")))
    con.print(pairs)
    return 0


def cmd_validate(args) -> int:
    from lcf.config import load_recipe, validate_recipe

    failed = 0
    for path in args.recipes:
        try:
            validate_recipe(load_recipe(path, args.overrides), origin=path)
        except LCFError as exc:
            failed += 1
            print(f"FAIL {path}: {exc}", file=sys.stderr)
        else:
            print(f"ok   {path}")
    return 1 if failed else 0


def cmd_models_prepare(args) -> int:
    from lcf import cards
    from lcf.models.loading import prepare

    names = args.names
    if args.all:
        names = [n for n in cards.model_card_names() if cards.model_card(n).source.kind == "pip_gguf"]
    if not names:
        print("name at least one model card, or pass --all", file=sys.stderr)
        return 2
    for name in names:
        out = prepare(name, force=args.force)
        print(f"{name}: {out}")
    return 0


def cmd_inspect(args) -> int:
    from lcf.inspect import inspect_recipe

    inspect_recipe(args.recipe, args.overrides, text=args.text, console=_console())
    return 0


def cmd_train(args) -> int:
    from lcf.training.run import train

    run = train(args.recipe, args.overrides, resume=args.resume)
    print(f"run directory: {run}")
    return 0


def cmd_train_lora(args) -> int:
    from lcf.training.lora import train_lora

    run = train_lora(args.recipe, args.overrides, rank=args.rank)
    print(f"LoRA control written to {run / 'lora'}")
    return 0


def cmd_export(args) -> int:
    from lcf.export import export

    out = export(args.run, args.out, which=args.which)
    print(f"adapter written to {out}")
    return 0


def cmd_demo(args) -> int:
    from lcf.demo import run_demo

    run_demo(args.recipe, args.overrides, skip_train=args.skip_train, console=_console())
    return 0


def cmd_eval(args) -> int:
    import torch

    from lcf.eval.compose import build_systems, resolve_adapter
    from lcf.eval.harness import adapter_labels, evaluate, format_table, parse_splits, write_report
    from lcf.eval.tasks import load_task
    from lcf.runtime import AdapterError, load_adapter

    if args.limit is not None and args.limit < 1:
        raise LCFError(f"--limit must be >= 1 (items per task), got {args.limit}; leave it out to evaluate every item")
    splits = parse_splits(args.split, args.tasks)
    tasks = [load_task(t, data_root=args.data_root, split=splits[t], limit=args.limit, seed=args.seed) for t in args.tasks]
    dirs = [resolve_adapter(a) for a in args.adapters]
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    first = load_adapter(dirs[0], device=device, dtype=args.dtype)
    adapters = [first]
    for d in dirs[1:]:
        try:
            adapters.append(load_adapter(d, sharer=first.sharer, receiver=first.receiver, device=device))
        except AdapterError as exc:
            raise AdapterError(
                f"{d}: every adapter given to `lcf eval` must be for the pair of the first one "
                f"({dirs[0]}: sharer {first.sharer.name}, receiver {first.receiver.name}); {exc}"
            ) from exc
    chosen = list(args.systems) if args.systems else [k for k in DEFAULT_SYSTEMS if k != "lora" or args.lora]
    systems = build_systems(adapters, adapter_labels([str(d) for d in dirs]), chosen,
                            text_tokens=args.text_tokens, lora=args.lora or [])
    results = evaluate(systems, tasks, letter_scoring=args.letter, batch_size=args.batch_size,
                       progress=not args.no_progress, seed=args.seed, max_new_tokens=args.max_new_tokens,
                       latency_runs=args.latency_runs)
    out = write_report(results, args.out)
    print(format_table(results))
    print(f"report written to {out} (results.json, report.md, accuracy.png, size_vs_accuracy.png, gates.png)")
    return 0


def _read_text(arg: str) -> str:
    """``-`` for stdin, ``@FILE`` for a file's text, else the argument itself."""
    if arg == "-":
        return sys.stdin.read()
    if arg.startswith("@"):
        path = Path(arg[1:])
        if not path.is_file():
            raise LCFError(f"{path} does not exist (an @FILE argument names a text file to read)")
        return path.read_text()
    return arg


def cmd_send(args) -> int:
    from lcf.runtime import load_adapter

    adapter = load_adapter(args.adapter, device=args.device)
    data = adapter.send(_read_text(args.context), spans=args.spans).to_bytes(quantize=args.quantize)
    if args.out == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        Path(args.out).write_bytes(data)
        print(f"latent message: {len(data)} bytes ({args.quantize}) written to {args.out}", file=sys.stderr)
    return 0


def cmd_receive(args) -> int:
    from lcf.runtime import load_adapter

    data = sys.stdin.buffer.read() if args.message == "-" else Path(args.message).read_bytes()
    adapter = load_adapter(args.adapter, device=args.device, with_sharer=False)  # the receiver side only
    own = _read_text(args.own_context) if args.own_context else ""
    print(adapter.receive(data, _read_text(args.question), own_context=own, max_new_tokens=args.max_new_tokens))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lcf", description="Latent Cache Flow: KV-cache communication between LLMs")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="registered components and model/pair cards")
    p.set_defaults(fn=cmd_list)

    p = sub.add_parser("validate", help="check recipes without loading any model")
    p.add_argument("recipes", nargs="+", help="recipe files; trailing key=value items are overrides")
    p.set_defaults(fn=cmd_validate)

    models = sub.add_parser("models", help="model cache management").add_subparsers(dest="models_cmd", required=True)
    p = models.add_parser("prepare", help="convert pip GGUF models into the HF safetensors cache")
    p.add_argument("names", nargs="*")
    p.add_argument("--all", action="store_true", help="every card with a pip GGUF source")
    p.add_argument("--force", action="store_true", help="convert again even if prepared")
    p.set_defaults(fn=cmd_models_prepare)

    p = sub.add_parser("inspect", help="KV shapes, layer map and token alignment of a recipe's pair")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*", help="key=value recipe overrides")
    p.add_argument("--text", default=None, help="sample text to align (default: a built-in sentence)")
    p.set_defaults(fn=cmd_inspect)

    p = sub.add_parser("train", help="train a recipe's translator (LLMs frozen)")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*", help="key=value recipe overrides, e.g. trainer.max_steps=50")
    p.add_argument("--resume", action="store_true", help="continue from <run>/ckpt/last.ckpt")
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("train-lora", help="the LoRA-receiver control: LoRA on the receiver alone, same data and steps")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*", help="key=value recipe overrides")
    p.add_argument("--rank", type=int, default=None, help="LoRA rank (default: match the translator's parameter count)")
    p.set_defaults(fn=cmd_train_lora)

    p = sub.add_parser("export", help="export a run's translator as a standalone adapter folder")
    p.add_argument("run", help="run directory (checkpoints/<name>) or a .ckpt file")
    p.add_argument("out", help="adapter folder to write")
    p.add_argument("--which", choices=["best", "last"], default="best", help="checkpoint of a run directory")
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser("demo", help="train -> export -> runtime -> comparison table on the real pair")
    p.add_argument("recipe", nargs="?", default="recipes/quickstart.yaml")
    p.add_argument("overrides", nargs="*", help="key=value recipe overrides")
    p.add_argument("--skip-train", action="store_true", help="reuse the run directory's checkpoint")
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser("eval", help="benchmark adapters against baselines and controls on the same items")
    p.add_argument("adapters", nargs="+", metavar="ADAPTER", help="adapter folders, run directories or recipes (one pair)")
    p.add_argument("--tasks", nargs="+", required=True, help="task names, e.g. arc_easy openbookqa mmlu_redux")
    p.add_argument("--limit", type=int, default=None, help="items per task (seeded sample); default all")
    p.add_argument("--out", required=True, help="report folder (results.json, report.md, plots)")
    p.add_argument("--systems", nargs="+", choices=SYSTEM_CHOICES, default=None,
                   help="systems to compare (default: all; lora only with --lora)")
    p.add_argument("--text-tokens", nargs="+", type=int, default=[50], metavar="N",
                   help="message budgets of the text-to-text relay (one system each; default 50)")
    p.add_argument("--lora", nargs="+", default=None, metavar="RUN_DIR", help="`lcf train-lora` runs to compare")
    p.add_argument("--letter", action="store_true", help="score answer letters ' A', ' B', ... not option texts")
    p.add_argument("--data-root", default=None, help="benchmark files root (default $LCF_DATA_ROOT)")
    p.add_argument("--split", nargs="+", default=None, help="SPLIT for every task and/or TASK=SPLIT")
    p.add_argument("--seed", type=int, default=0, help="item sampling and torch seed")
    p.add_argument("--batch-size", type=int, default=8, help="items per forward pass")
    p.add_argument("--max-new-tokens", type=int, default=None, help="generation budget of QA tasks")
    p.add_argument("--latency-runs", type=int, default=3, help="timed runs per latency measure (0: skip)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--dtype", default=None, help="model dtype (default: the model card's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(fn=cmd_eval)

    p = sub.add_parser("send", help="cross-context sender: read a context, write a latent message")
    p.add_argument("adapter", help="exported cross-context adapter folder")
    p.add_argument("--context", required=True, help="the context: text, @FILE, or - for stdin")
    p.add_argument("--out", default="-", help="message file (default -: stdout, binary)")
    p.add_argument("--quantize", choices=["none", "int8"], default="none", help="int8: ~4x smaller message")
    p.add_argument("--spans", choices=["paragraph", "sentence", "tokens"], default=None,
                   help="how to cut the context into spans (default: the scheme the adapter was trained with)")
    p.add_argument("--device", default=None)
    p.set_defaults(fn=cmd_send)

    p = sub.add_parser("receive", help="cross-context receiver: answer a question from a latent message")
    p.add_argument("adapter", help="the same adapter folder the sender used")
    p.add_argument("message", help="message file, or - for stdin")
    p.add_argument("--question", required=True, help="the question: text, @FILE, or - for stdin")
    p.add_argument("--own-context", default=None, help="context the receiver reads itself (text or @FILE)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--device", default=None)
    p.set_defaults(fn=cmd_receive)
    return parser


def _split_overrides(args) -> None:
    """`lcf validate a.yaml b.yaml k=v`: items with '=' that are not files are overrides."""
    if hasattr(args, "recipes"):
        items = args.recipes
        args.recipes = [i for i in items if "=" not in i or Path(i).exists()]
        args.overrides = [i for i in items if i not in args.recipes]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    _split_overrides(args)
    try:
        return args.fn(args)
    except LCFError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
