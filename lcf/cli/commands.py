"""Implementations of the evaluation and cross-context commands of :mod:`lcf.cli.app`:
``lcf eval``, ``lcf eval-xc``, ``lcf send`` and ``lcf receive``."""
from __future__ import annotations

import sys
from pathlib import Path

from lcf.cli.choices import DEFAULT_SYSTEMS
from lcf.errors import LCFError


def cmd_eval(args) -> int:
    import torch

    from lcf.eval.compose import build_systems, pair_systems, resolve_adapter
    from lcf.eval.harness import adapter_labels, parse_splits, parse_task_options
    from lcf.eval.tasks import load_task
    from lcf.runtime import AdapterError, load_adapter

    if args.limit is not None and args.limit < 1:
        raise LCFError(f"--limit must be >= 1 (items per task), got {args.limit}; leave it out to evaluate every item")
    from lcf.paths import check_output_path

    check_output_path(args.out, "--out report folder")  # before any model loads
    splits = parse_splits(args.split, args.tasks)
    options = parse_task_options(args.task_option, args.tasks)
    tasks = [load_task(t, data_root=args.data_root, split=splits[t], limit=args.limit, seed=args.seed, **options[t])
             for t in args.tasks]
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.pair or not args.adapters:
        if args.card:
            raise LCFError("--card writes scores into adapter folders; give the adapters to evaluate (not --pair)")
        if not args.pair or args.adapters:
            raise LCFError("lcf eval compares adapters (folders, run directories or recipes) with baselines, or with "
                           "--pair PAIR (and no adapter) the pair's models alone; give one of the two")
        systems = pair_systems(args.pair, args.systems or ("receiver", "sharer", "text"), text_tokens=args.text_tokens,
                               device=device, dtype=args.dtype)
        return _evaluate_and_report(args, systems, tasks)
    dirs = [resolve_adapter(a) for a in args.adapters]
    first = load_adapter(dirs[0], device=device, dtype=args.dtype)
    adapters = [first]
    from lcf.runtime import read_config

    for d in dirs[1:]:
        # a composed adapter hooks its receiver LoRA onto its receiver: it shares no receiver with another adapter
        shared = not (read_config(d).get("receiver_adapter") or first.config.get("receiver_adapter"))
        try:
            adapters.append(load_adapter(d, sharer=first.sharer, receiver=first.receiver if shared else None,
                                         device=device, dtype=None if shared else args.dtype))
        except AdapterError as exc:
            raise AdapterError(
                f"{d}: every adapter given to `lcf eval` must be for the pair of the first one "
                f"({dirs[0]}: sharer {first.sharer.name}, receiver {first.receiver.name}); {exc}"
            ) from exc
    chosen = list(args.systems) if args.systems else [k for k in DEFAULT_SYSTEMS if k != "lora" or args.lora]
    labels = adapter_labels([str(d) for d in dirs])
    systems = build_systems(adapters, labels, chosen, text_tokens=args.text_tokens, lora=args.lora or [])
    return _evaluate_and_report(args, systems, tasks, cards=(dirs, labels) if args.card else None)


def _evaluate_and_report(args, systems, tasks, cards=None) -> int:
    from lcf.eval.harness import evaluate, format_table, write_report

    results = evaluate(systems, tasks, mc_format=args.mc_format, letter_scoring=args.letter,
                       generate_letter=args.generate_letter,
                       batch_size=args.batch_size, progress=not args.no_progress, seed=args.seed,
                       max_new_tokens=args.max_new_tokens, latency_runs=args.latency_runs)
    out = write_report(results, args.out)
    print(format_table(results))
    print(f"report written to {out} (results.json, report.md, accuracy.png, size_vs_accuracy.png, gates.png)")
    if cards is not None:
        from lcf.cli.adapters import write_cards

        for card in write_cards(results, *cards):
            print(f"scores written into {card}")
    return 0


def cmd_eval_xc(args) -> int:
    import json

    import torch

    from omegaconf import OmegaConf
    from lcf.eval.compose import resolve_adapter
    from lcf.eval.xc import build_xc_systems, evaluate_xc, format_xc_table, held_out_items
    from lcf.runtime import load_adapter

    if args.limit is not None and args.limit < 1:
        raise LCFError(f"--limit must be >= 1, got {args.limit}")
    from lcf.paths import check_output_path, write_text_whole

    check_output_path(args.out, "--out report folder")  # before any model loads
    torch.manual_seed(args.seed)
    adapter = load_adapter(resolve_adapter(args.adapter), device=args.device)
    data = OmegaConf.to_container(OmegaConf.from_dotlist(list(args.data))) if args.data else None
    items, facts = held_out_items(adapter, data, limit=args.limit, seed=args.seed, data_root=args.data_root,
                                  exclude=args.exclude, only=args.only)
    _check_xc_lengths(adapter, items, args.systems, args.max_new_tokens)  # before any compute
    lora = _own_reading_lora(adapter, args.receiver_lora) if args.receiver_lora else None
    systems = build_xc_systems(adapter, args.systems, text_tokens=args.text_tokens,
                               has_own=facts["has_own_context"], spans=args.spans, receiver_lora=lora)
    results = evaluate_xc(systems, items, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                          latency_runs=args.latency_runs, seed=args.seed)
    results["selection"] = facts
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = format_xc_table(results)
    write_text_whole(out / "results.json", json.dumps(results, indent=2))
    write_text_whole(out / "report.md", 
        f"# lcf cross-context evaluation\n\n{table}\n\n{len(items)} held-out items of {facts['data']['type']}; "
        f"EM / F1 in %, first line of a greedy answer; contains: the whole answer contains a gold answer; TTFT "
        f"at batch 1, median of {args.latency_runs} runs; bytes sent from the sharer's side to the receiver's.\n")
    print(table)
    print(f"report written to {out} (results.json, report.md)")
    return 0


def _own_reading_lora(adapter, path: str):
    """The receiver LoRA of ``--receiver-lora``, attached to the adapter's receiver and disabled (the systems that
    use it switch it on)."""
    from lcf.runtime.receiver_lora import ReceiverLoRA, attached, find_peft_folder

    model = adapter.receiver.model
    if attached(model) is not None:
        raise LCFError(f"--receiver-lora {path}: this adapter's receiver already carries a receiver LoRA (the adapter "
                       f"is composed with one); its own-reading systems would run with both. Evaluate a cross-context "
                       f"adapter without a receiver LoRA, or leave --receiver-lora out")
    lora = ReceiverLoRA.from_peft(find_peft_folder(path), model)
    lora.to(device=next(model.parameters()).device)
    lora.enabled = False
    return lora.attach(model)


def _check_xc_lengths(adapter, items, systems, max_new_tokens: int) -> None:
    """Refuse an item whose receiver prompt (question after the context it reads itself: all of it for
    the "full" system) and answer would not fit the receiver's positions."""
    from lcf.runtime.limits import check_batch_lengths

    if not hasattr(adapter, "encode_questions"):
        return
    for i, it in enumerate(items):
        full = "full" in systems or "full-short" in systems
        parts = (it.receiver_context, it.sharer_context) if full else (it.receiver_context,)
        batch = adapter.encode_questions([it.question], ["\n\n".join(p for p in parts if p)])
        check_batch_lengths(batch, adapter.receiver.model, [], new_tokens=max_new_tokens,
                            options=f"Item {i} ({it.id}) is too long for the receiver: leave such items out "
                                    f"(--exclude, another --data, --limit) or drop the 'full' system.")


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
    from lcf.paths import check_output_path, write_bytes_whole
    from lcf.runtime import load_adapter

    if args.out != "-":
        check_output_path(args.out, "--out message file")  # before any model loads
    context = _read_text(args.context)
    adapter = load_adapter(args.adapter, device=args.device)
    data = adapter.send(context, spans=args.spans).to_bytes(quantize=args.quantize)
    if args.out == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        write_bytes_whole(args.out, data)  # whole or not at all
        print(f"latent message: {len(data)} bytes ({args.quantize}) written to {args.out}", file=sys.stderr)
    return 0


def cmd_receive(args) -> int:
    from lcf.runtime import load_adapter

    if args.message != "-" and not Path(args.message).is_file():
        raise LCFError(f"message file {args.message} does not exist; give the file `lcf send --out FILE` wrote, or - "
                       f"to read the message from stdin")
    data = sys.stdin.buffer.read() if args.message == "-" else Path(args.message).read_bytes()
    question, own = _read_text(args.question), _read_text(args.own_context) if args.own_context else ""
    adapter = load_adapter(args.adapter, device=args.device, with_sharer=False)  # the receiver side only
    print(adapter.receive(data, question, own_context=own, max_new_tokens=args.max_new_tokens))
    return 0
