"""Adapter cards: the README.md that `lcf export` writes into an adapter folder.

The card says what the adapter is (pair, recipe, data, steps, parameters, size, gates) and how to load
it. `lcf eval ... --card` adds a scores section from the evaluation's results (each task with the
receiver alone and the adapter's controls beside the adapter), and keeps a machine-readable copy in an
HTML comment that `lcf list --adapters DIR` reads. Plain Python (no torch import): the runtime's
readers and the CLI use it.
"""
from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CARD_NAME = "README.md"
SCORES_BEGIN = "<!-- lcf:scores -->"
SCORES_END = "<!-- /lcf:scores -->"
_SCORES_JSON = re.compile(r"<!-- lcf:scores-json (\{.*?\}) -->", re.S)


def gate_summary(translators: Any) -> list[dict[str, Any]]:
    """Per translator: how many K and V gates are open at inference (hard, logit > 0), and the range of
    the sigmoid gate values."""
    modules = list(translators) if isinstance(translators, (list, tuple)) else [translators]
    out = []
    for tr in modules:
        values = tr.gate_values() if hasattr(tr, "gate_values") else {}
        if not values:
            out.append({})
            continue
        ks = [float(k) for k, _ in values.values()]
        vs = [float(v) for _, v in values.values()]
        out.append({"layers": len(values), "k_open": sum(k > 0.5 for k in ks), "v_open": sum(v > 0.5 for v in vs),
                    "min": min(ks + vs), "max": max(ks + vs),
                    "closed": sorted(layer for layer, (k, v) in values.items() if k <= 0.5 and v <= 0.5)})
    return out


def _mb(n: int | None) -> str:
    return f"{n / 1e6:.1f} MB" if n else "?"


def _params(n: int | None) -> str:
    if not n:
        return "?"
    return f"{n / 1e6:.2f}M" if n >= 100_000 else f"{n:,}"  # a tiny adapter's count, not "0.00M"


def _sharers(config: dict[str, Any]) -> list[dict[str, Any]]:
    """Every sharer's section (one-sharer adapters: built from the top-level keys)."""
    if config.get("sharers"):
        return list(config["sharers"])
    # the top-level count covers everything the adapter trains: a receiver LoRA is counted on its own row
    total, lora = config.get("num_parameters"), (config.get("receiver_adapter") or {}).get("num_parameters") or 0
    return [{"translator": config.get("translator"), "layer_map": config.get("layer_map"),
             "token_alignment": config.get("token_alignment"), "sharer": config.get("sharer"),
             "templates": config.get("templates"), "num_parameters": total - lora if total else total}]


def _data_line(data: dict[str, Any] | None) -> str:
    if not data:
        return "not recorded"
    if isinstance(data.get("sets"), list):  # xc_mix: each set with its item count
        return "; ".join(f"{_data_line({k: v for k, v in s.items() if k != 'items'})}, {s.get('items', 'all')} items"
                         for s in data["sets"] if isinstance(s, dict))
    what = data.get("files") or data.get("hub_id") or data.get("task") or data.get("type")
    what = ", ".join(map(str, what)) if isinstance(what, (list, tuple)) else what
    keys = ("type", "train_size", "val_size", "num_train", "num_val", "max_prompt_tokens", "max_response_tokens")
    extra = ", ".join(f"{k} {data[k]}" for k in keys if data.get(k) is not None)
    return f"{what} ({extra})" if extra else str(what)


def _per_token(config: dict[str, Any]) -> bool:
    from lcf.runtime.kinds import PER_TOKEN, adapter_kind

    return adapter_kind(str((config.get("translator") or {}).get("type"))) == PER_TOKEN


def _init_line(training: dict[str, Any]) -> str | None:
    """How a per-token map's weights started (its ``init:`` section and what it measured)."""
    init, done = training.get("init"), (training.get("summary") or {}).get("init") or {}
    if not isinstance(init, dict):
        return None
    if "from" in init:
        return f"| init | from {init['from']} (a second stage) |"
    if "fit" not in init:  # e.g. only a staged receiver LoRA, which its own row describes
        return None
    lam = done.get("lambda")
    r2 = (done.get("r2") or {}).get(str(lam)) if lam is not None else None
    fit = _data_line({"sets": init.get("fit")}) if isinstance(init.get("fit"), list) else "?"
    got = (f"; {done['tokens']:,} tokens, lambda {lam}, held-out R^2 {r2:.3f}"
           if isinstance(r2, (int, float)) and done.get("tokens") else "")
    return f"| init | ridge fit on {fit}{got} |"


def _receiver_lora_line(spec: dict[str, Any], training: dict[str, Any]) -> str:
    """The receiver LoRA a composed adapter carries: its shape, size, how it was trained and where it lies."""
    args = spec.get("args") or {}
    first = (training.get("init") or {}).get("receiver_adapter")
    how = f"staged: trained first ({first}), then lr_scale {args.get('lr_scale')}" if first else \
        f"trained jointly, lr_scale {args.get('lr_scale')}"
    return (f"| receiver LoRA | rank {args.get('rank')}, alpha {args.get('alpha')} on "
            f"{', '.join(args.get('target_modules') or [])}; {_params(spec.get('num_parameters'))} parameters ({how}); "
            f"PEFT folder `{spec.get('folder')}/` |")


def load_snippet(config: dict[str, Any], path: str) -> str:
    """The exact code that loads this adapter and uses it."""
    if config.get("compressor") or _per_token(config):
        return (f'from lcf.runtime import load_adapter\n\n'
                f'sender = load_adapter("{path}")                      # sharer + receiver\n'
                f'data = sender.send("Ravel Doskin lives in Lisbon.").to_bytes(quantize="int8")\n'
                f'receiver = load_adapter("{path}", with_sharer=False)  # no sharer loaded\n'
                f'print(receiver.receive(data, "Which city does Ravel Doskin live in?"))')
    return (f'from lcf.runtime import load_adapter\n\n'
            f'adapter = load_adapter("{path}")   # loads the models named above\n'
            f'print(adapter.generate("Name three primary colours.", max_new_tokens=48))')


def adapter_card(config: dict[str, Any], *, path: str | Path | None = None,
                 gates: Sequence[dict[str, Any]] | None = None) -> str:
    """The README.md text of an adapter folder from its ``adapter_config.json`` (and gate summary).
    Refuses NaN or infinite numbers in either (a diverged run's gates read as closed, not as an error)."""
    from lcf.guards import check_finite_values

    check_finite_values({"config": config, "gates": list(gates or [])}, "adapter card",
                        "the adapter's weights or config are not finite; export an earlier checkpoint")
    training = config.get("training") or {}
    summary = training.get("summary") or {}
    trainer = training.get("trainer") or {}
    sharers = _sharers(config)
    receiver = (config.get("receiver") or {}).get("name", "?")
    name = training.get("recipe") or (Path(path).name if path else "adapter")
    lines = [f"# lcf adapter: {name}", "",
             f"Latent Cache Flow adapter: {' + '.join(s['sharer']['name'] for s in sharers)} "
             f"{'share their' if len(sharers) > 1 else 'shares its'} KV cache with {receiver}.", "",
             "| | |", "|---|---|",
             f"| receiver | {receiver} |"]
    for i, s in enumerate(sharers):
        tr = s.get("translator") or {}
        args = ", ".join(f"{k}={v}" for k, v in (tr.get("args") or {}).items())
        label = "sharer" if len(sharers) == 1 else f"sharer {i}"
        layer_map = ("none: every layer of the context, one code per token" if _per_token(config) else
                     ((s.get("layer_map") or {}).get("spec") or {}).get("type", "?"))
        lines += [f"| {label} | {s['sharer']['name']} |",
                  f"| {label} translator | {tr.get('type', '?')} ({args}), {_params(s.get('num_parameters'))} "
                  f"parameters; layer map {layer_map}, token alignment "
                  f"{(s.get('token_alignment') or {}).get('type', '?')} |"]
    if len(sharers) > 1:
        lines.append(f"| combine | {config.get('combine', 'sequential')} |")
    if config.get("compressor"):
        c = config["compressor"]
        lines.append(f"| compressor | {c['type']} ({', '.join(f'{k}={v}' for k, v in (c.get('args') or {}).items())}) |")
    if config.get("receiver_adapter"):
        lines.append(_receiver_lora_line(config["receiver_adapter"], training))
    if _init_line(training):
        lines.append(_init_line(training))
    metrics = summary.get("metrics") or {}
    val = metrics.get("val/loss")
    lines += [
        f"| recipe | {training.get('recipe', '?')} |",
        f"| data | {_data_line(training.get('data'))} |",
        f"| training | {training.get('global_step', '?')} steps of batch {trainer.get('batch_size', '?')}, lr "
        f"{trainer.get('lr', '?')}" + (f", {summary['seconds'] / 60:.1f} min" if summary.get("seconds") else "")
        + (f"; validation loss {val:.4f}" if isinstance(val, (int, float)) else "") + " |",
        f"| checkpoint | {training.get('checkpoint', '?')} |",
        f"| parameters | {config.get('num_parameters', 0):,} ({_mb(config.get('size_bytes'))}, "
        f"{config.get('dtype', '?')}) |",
        f"| lcf / torch / transformers | {config.get('lcf_version', '?')} / {training.get('torch', '?')} / "
        f"{training.get('transformers', '?')} |",
    ]
    if any(gates or []):
        lines += ["", "## Gates", "",
                  "Per fused receiver layer, one K and one V gate; at inference a gate is open when its "
                  "sigmoid value is above 0.5."]
        for i, g in enumerate(gates):
            if not g:
                continue
            who = f"sharer {i}: " if len(gates) > 1 else ""
            closed = f"; closed layers {g['closed']}" if g["closed"] else "; no layer fully closed"
            lines.append(f"- {who}K open {g['k_open']}/{g['layers']}, V open {g['v_open']}/{g['layers']}, values "
                         f"{g['min']:.3f}-{g['max']:.3f}{closed}")
    lines += ["", "## Load", "", "```python", load_snippet(config, str(path or ".")), "```", ""]
    if config.get("receiver_adapter"):
        folder = f"{path or '.'}/{config['receiver_adapter'].get('folder')}"
        lines += ["`load_adapter` applies the receiver LoRA to the receiver (no PEFT needed). The LoRA alone, without "
                  f"the translator, is a PEFT adapter: `PeftModel.from_pretrained(receiver, \"{folder}\")`.", ""]
    lines += ["Sharer and receiver fingerprints (config and tokenizer) are checked when loading: "
              "the adapter refuses other models.", "", SCORES_BEGIN,
              "No scores yet: `lcf eval ADAPTER --tasks ... --out DIR --card` adds them here.", SCORES_END, ""]
    return "\n".join(lines)


def scores_of(results: dict[str, Any], label: str) -> dict[str, Any]:
    """This adapter's rows of an evaluation's results: per task, the primary score of the receiver alone,
    the adapter and its controls (whatever of them was evaluated)."""
    systems = results.get("systems") or {}
    mine = {info.get("control", "none"): name for name, info in systems.items() if info.get("adapter") == label}
    if "none" not in mine:
        raise KeyError(f"no system of adapter {label!r} in these results (systems: {', '.join(systems)})")
    cols = {"receiver alone": "receiver" if "receiver" in systems else None, "adapter": mine["none"],
            "zero cache": mine.get("zero"), "another item's cache": mine.get("mismatched")}
    tasks = {}
    for task, info in (results.get("tasks") or {}).items():
        row = {}
        for col, system in cols.items():
            score = ((results.get("scores") or {}).get(system) or {}).get(task) if system else None
            if score is not None:
                row[col] = score.get("primary")
        tasks[task] = {"metric": info.get("metric"), "n": info.get("n"), **row}
    adapter = [t["adapter"] for t in tasks.values() if t.get("adapter") is not None]
    return {"tasks": tasks, "headline": {"metric": "mean primary score", "tasks": len(adapter),
                                         "value": sum(adapter) / len(adapter) if adapter else None}}


def scores_section(scores: dict[str, Any]) -> str:
    cols = ["receiver alone", "adapter", "zero cache", "another item's cache"]
    lines = [SCORES_BEGIN, "## Scores (`lcf eval --card`)", "",
             "Primary metric per task; the controls feed the adapter an all-zero sharer cache or another "
             "item's cache: what they keep of the gain is adaptation, not communication.", "",
             "| task | metric | n | " + " | ".join(cols) + " |", "|---|---|---:|" + "---:|" * len(cols)]
    for task, row in scores["tasks"].items():
        cells = [f"{100 * row[c]:.1f}" if isinstance(row.get(c), (int, float)) else "-" for c in cols]
        lines.append(f"| {task} | {row.get('metric')} | {row.get('n')} | " + " | ".join(cells) + " |")
    lines += ["", f"<!-- lcf:scores-json {json.dumps(scores)} -->", SCORES_END]
    return "\n".join(lines)


def write_scores(folder: str | Path, scores: dict[str, Any]) -> Path:
    """Put ``scores`` into the card of ``folder`` (replacing an earlier scores section); a folder without a
    card gets one from its config first."""
    from lcf.runtime.format import read_config

    from lcf.guards import check_finite_values

    check_finite_values(scores, f"scores for the card of {folder}", "evaluate again; a score cannot be NaN")
    folder = Path(folder)
    card = folder / CARD_NAME
    text = card.read_text() if card.is_file() else adapter_card(read_config(folder), path=folder)
    section = scores_section(scores)
    if SCORES_BEGIN in text and SCORES_END in text:
        head, rest = text.split(SCORES_BEGIN, 1)
        text = head + section + rest.split(SCORES_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    from lcf.paths import write_text_whole

    write_text_whole(card, text)  # a failed write leaves the previous card
    return card


def read_scores(folder: str | Path) -> dict[str, Any] | None:
    """The scores `lcf eval --card` wrote into the card of ``folder``, or None."""
    card = Path(folder) / CARD_NAME
    if not card.is_file():
        return None
    match = _SCORES_JSON.search(card.read_text())
    return json.loads(match.group(1)) if match else None


def find_adapters(root: str | Path, max_depth: int = 4) -> list[Path]:
    """Adapter folders (with an ``adapter_config.json``) under ``root``, at most ``max_depth`` levels down."""
    from lcf.runtime.format import CONFIG_NAME, RECEIVER_LORA_FOLDER

    root = Path(root)
    found = []
    for cfg in sorted(root.rglob(CONFIG_NAME)):
        lora = cfg.parent.name == RECEIVER_LORA_FOLDER and (cfg.parent.parent / CONFIG_NAME).is_file()  # PEFT's
        if len(cfg.relative_to(root).parts) - 1 <= max_depth and not lora and not any(
                p.startswith(".") for p in cfg.relative_to(root).parts[:-1]):
            found.append(cfg.parent)
    return found


def adapter_rows(root: str | Path) -> list[dict[str, Any]]:
    """One row per adapter under ``root``: path, pair, translator(s), parameters, size, headline score."""
    from lcf.errors import LCFError
    from lcf.runtime.format import read_config

    rows = []
    for folder in find_adapters(root):
        try:
            cfg = read_config(folder)
        except (LCFError, OSError, ValueError) as exc:  # a broken entry is reported; the listing goes on
            rows.append({"path": str(folder), "error": str(exc).splitlines()[0]})
            continue
        sharers = _sharers(cfg)
        scores = read_scores(folder)
        head = (scores or {}).get("headline") or {}
        rows.append({
            "path": str(folder), "receiver": cfg["receiver"]["name"],
            "sharers": [s["sharer"]["name"] for s in sharers],
            "translator": "+".join((s.get("translator") or {}).get("type", "?") for s in sharers),
            "num_parameters": cfg.get("num_parameters"), "size_bytes": cfg.get("size_bytes"),
            "score": head.get("value"), "score_tasks": head.get("tasks"),
            "tasks": sorted((scores or {}).get("tasks", {})),
        })
    return rows
