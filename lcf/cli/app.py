"""The ``lcf`` command line.

    lcf list [--adapters DIR]             registered components and model/pair cards (or DIR's adapters)
    lcf validate RECIPE... [key=value]    check recipes without loading any model
    lcf models prepare NAME... | --all    convert pip GGUF models into the safetensors cache once
    lcf inspect RECIPE [key=value]        KV shapes, layer map and token alignment of a recipe's pair
    lcf params RECIPE... [key=value]      dry run: translator parameter counts from the cards, next to the papers'
    lcf train RECIPE [key=value] [--resume]
    lcf train-lora RECIPE [key=value]     LoRA-tuned receiver control (same data, steps, ~parameters)
    lcf export RUN_OR_CKPT OUT_DIR        standalone adapter: adapter.safetensors + adapter_config.json
    lcf demo [RECIPE] [key=value]         train -> export -> runtime -> answers -> comparison table [--xc RECIPE]
    lcf eval ADAPTER|RUN|RECIPE... --tasks T... [--limit N] --out DIR   adapters vs baselines and controls
    lcf send ADAPTER --context TEXT|@FILE [--out MSG] [--quantize int8]   cross-context: context -> latent message
    lcf receive ADAPTER MSG --question TEXT             cross-context: latent message + question -> answer
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from lcf.cli.choices import MC_FORMAT_CHOICES, SYSTEM_CHOICES, XC_SYSTEM_CHOICES
from lcf.cli.extras import missing_extra_line
from lcf.cli.quiet import quiet_third_party
from lcf.errors import LCFError


def _console():
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 120)


def cmd_list(args) -> int:
    from rich.table import Table

    from lcf import cards
    from lcf.registry import REGISTRIES

    con = _console()
    if args.adapters:
        from lcf.cli.adapters import print_adapters

        return print_adapters(args.adapters, con)
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
    from lcf.cli.inspect import inspect_recipe

    inspect_recipe(args.recipe, args.overrides, text=args.text, console=_console())
    return 0


def cmd_params(args) -> int:
    from lcf.cli.params import print_params

    return 1 if print_params(args.recipes, args.overrides) else 0


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

    out = export(args.run, args.out, which=args.which, overwrite=args.overwrite)
    print(f"adapter written to {out}")
    return 0


def cmd_prune(args) -> int:
    from lcf.paths import check_output_path
    from lcf.prune import prune_adapter

    check_output_path(args.out, "pruned adapter folder", sibling=True)
    out = prune_adapter(args.adapter, args.out, keep=args.keep, threshold=args.threshold)
    import json

    cfg = json.loads((out / "adapter_config.json").read_text())
    info = cfg["training"]["pruned"]
    print(f"pruned adapter written to {out}: kept {len(info['kept'])} of {len(info['layers_before'])} layers "
          f"{info['kept']}, {info['size_bytes_before']} -> {cfg['size_bytes']} bytes")
    return 0


def cmd_demo(args) -> int:
    from lcf.cli.demo import run_demo

    con = _console()
    run_demo(args.recipe, args.overrides, skip_train=args.skip_train, console=con)
    if args.xc != "none":
        from lcf.cli.demo_xc import run_xc_demo

        run_xc_demo(args.xc, console=con)
    return 0


def _lazy(name: str):
    """A command implemented in lcf.cli.commands (imported only when that command runs)."""
    def run(args) -> int:
        from lcf.cli import commands

        return getattr(commands, name)(args)

    return run


cmd_eval, cmd_eval_xc = _lazy("cmd_eval"), _lazy("cmd_eval_xc")
cmd_send, cmd_receive = _lazy("cmd_send"), _lazy("cmd_receive")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lcf", description="Latent Cache Flow: KV-cache communication between LLMs")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="registered components and model/pair cards")
    p.add_argument("--adapters", metavar="DIR", default=None,
                   help="instead: the adapters under DIR with their pair, size and headline score (from their cards)")
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

    p = sub.add_parser("params", help="dry run: build each recipe's translator from the cards' shapes (no weights) "
                                      "and print its parameter count next to the papers' figures")
    p.add_argument("recipes", nargs="+", help="recipe files; trailing key=value items are overrides")
    p.set_defaults(fn=cmd_params)

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
    p.add_argument("--overwrite", action="store_true",
                   help="replace OUT_DIR even if it is a file or a folder that is not an lcf adapter (its contents are lost)")
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser("prune", help="a smaller adapter keeping the layers with the highest learned gates")
    p.add_argument("adapter", help="adapter folder (from lcf export)")
    p.add_argument("out", help="pruned adapter folder to write")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--keep", type=int, help="keep the N layers with the highest gate values")
    which.add_argument("--threshold", type=float, help="keep every layer whose gate value is >= T")
    p.set_defaults(fn=cmd_prune)

    p = sub.add_parser("demo", help="train -> export -> runtime -> comparison table on the real pair")
    p.add_argument("recipe", nargs="?", default="recipes/quickstart.yaml")
    p.add_argument("overrides", nargs="*", help="key=value recipe overrides")
    p.add_argument("--skip-train", action="store_true", help="reuse the run directory's checkpoint")
    p.add_argument("--xc", default="none", metavar="RECIPE",
                   help="also run the cross-context part with this recipe, e.g. recipes/crosscontext.yaml (about 20 "
                        "more minutes on a 2-core CPU; a 100-step run, 7 min, carried nothing); default: none")
    p.add_argument("--crosscontext", dest="xc", metavar="RECIPE", help=argparse.SUPPRESS)  # the old name of --xc
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser("eval", help="benchmark adapters against baselines and controls on the same items")
    p.add_argument("adapters", nargs="*", metavar="ADAPTER",
                   help="adapter folders, run directories or recipes (one pair)")
    p.add_argument("--pair", default=None,
                   help="no adapter: the models of this pair card alone (systems receiver, sharer, text)")
    p.add_argument("--tasks", nargs="+", required=True, help="task names, e.g. arc_easy openbookqa mmlu_redux")
    p.add_argument("--limit", type=int, default=None, help="items per task (seeded sample); default all")
    p.add_argument("--out", required=True, help="report folder (results.json, report.md, plots)")
    p.add_argument("--card", action="store_true",
                   help="also write each adapter's scores, with the receiver alone and its controls, into its README.md")
    p.add_argument("--systems", nargs="+", choices=SYSTEM_CHOICES, default=None,
                   help="systems to compare (default: all; lora only with --lora)")
    p.add_argument("--text-tokens", nargs="+", type=int, default=[50], metavar="N",
                   help="message budgets of the text-to-text relay (one system each; default 50)")
    p.add_argument("--lora", nargs="+", default=None, metavar="RUN_DIR", help="`lcf train-lora` runs to compare")
    p.add_argument("--format", dest="mc_format", choices=MC_FORMAT_CHOICES, default=None,
                   help="multiple-choice scoring: lmeval (default; lm-evaluation-harness's raw cloze prompt, acc and "
                        "acc_norm), chat (question + lettered options in the chat template, option texts scored), "
                        "letter, generate-letter")
    p.add_argument("--letter", action="store_true",
                   help="same as --format letter: chat template, the letters ' A', ' B', ... scored")
    p.add_argument("--generate-letter", action="store_true",
                   help="same as --format generate-letter: the letter a short greedy reply names (chat template)")
    p.add_argument("--data-root", default=None, help="benchmark files root (default $LCF_DATA_ROOT)")
    p.add_argument("--split", nargs="+", default=None, help="SPLIT for every task and/or TASK=SPLIT")
    p.add_argument("--task-option", nargs="+", default=None, metavar="TASK.OPTION=VALUE",
                   help="task arguments, e.g. mmlu_redux.all_rows=true arc_easy.hub_id=allenai/ai2_arc")
    p.add_argument("--seed", type=int, default=0, help="item sampling and torch seed")
    p.add_argument("--batch-size", type=int, default=8, help="items per forward pass")
    p.add_argument("--max-new-tokens", type=int, default=None, help="generation budget of QA tasks")
    p.add_argument("--latency-runs", type=int, default=3, help="timed runs per latency measure (0: skip)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--dtype", default=None, help="model dtype (default: the model card's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(fn=cmd_eval)

    p = sub.add_parser("eval-xc", help="cross-context: receiver alone / own half / text messages / LCF-X on held-out items")
    p.add_argument("adapter", help="cross-context adapter folder, run directory or recipe")
    p.add_argument("--out", required=True, help="report folder (results.json, report.md)")
    p.add_argument("--data", nargs="+", default=None, metavar="KEY=VALUE",
                   help="dataset to evaluate on, e.g. type=squad_xc (default: the adapter's training data)")
    p.add_argument("--data-root", default=None, help="data files root (default $LCF_DATA_ROOT)")
    p.add_argument("--limit", type=int, default=None, help="held-out items (seeded sample); default all")
    p.add_argument("--exclude", nargs="+", default=[], metavar="RESULTS_JSON",
                   help="leave out the items these earlier reports scored (to confirm on items not yet looked at)")
    p.add_argument("--only", nargs="+", default=[], metavar="RESULTS_JSON",
                   help="score exactly the items these earlier reports scored (the same items as another evaluation)")
    p.add_argument("--systems", nargs="+", default=list(XC_SYSTEM_CHOICES), choices=XC_SYSTEM_CHOICES)
    p.add_argument("--text-tokens", nargs="+", type=int, default=[50, 100, 200], metavar="N",
                   help="message budgets of the text baselines")
    p.add_argument("--spans", choices=["paragraph", "sentence", "tokens"], default=None,
                   help="cut sharer contexts this way for LCF-X (default: the scheme the adapter was trained with)")
    p.add_argument("--receiver-lora", default=None, metavar="LORA",
                   help="a receiver LoRA (an `lcf train-lora` run or a PEFT folder): each system in which the receiver "
                        "reads text itself (receiver, own, full, full-short) is also scored with it, '(LoRA)'")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--latency-runs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.set_defaults(fn=cmd_eval_xc)

    p = sub.add_parser("send", help="cross-context sender: read a context, write a latent message")
    p.add_argument("adapter", help="exported cross-context adapter folder")
    p.add_argument("--context", required=True, help="the context: text, @FILE, or - for stdin")
    p.add_argument("--out", default="-", help="message file (default -: stdout, binary)")
    p.add_argument("--quantize", choices=["none", "int8", "int4"], default="none",
                   help="int8: ~4x smaller message, int4: ~8x smaller")
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
    quiet_third_party()
    _split_overrides(args)
    try:
        return args.fn(args)
    except LCFError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:  # an optional dependency this command needs: name the extra that installs it
        line = missing_extra_line(exc, args.command)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        return 2
    except (OSError, RuntimeError) as exc:  # file-system faults: one line naming the path and the fix
        from lcf.paths import as_os_error, os_error_line

        fault = as_os_error(exc)
        if fault is None:
            raise
        print(f"error: {os_error_line(fault)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
