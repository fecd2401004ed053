"""Check `lcf eval`'s default multiple-choice scoring against lm-evaluation-harness itself.

Runs lm-eval (the optional extra ``lcf[lmeval]``) with its own ``arc_easy`` / ``arc_challenge`` /
``openbookqa`` task definitions, read from the local validation files (task files in
``benchmarks/lmeval_tasks/``, filled in here with the data root and lm-eval's task folder), on the
receiver alone and the sharer alone of a pair, then ``lcf eval --pair PAIR`` on the same items, and
compares them item by item: the option each picks by ``acc`` (summed log-likelihood) and by
``acc_norm`` (log-likelihood per character), the scores, and the log-likelihoods themselves.

    python benchmarks/lmeval_agreement.py --out docs/results/lmeval-agreement            # everything
    python benchmarks/lmeval_agreement.py --steps compare --out docs/results/lmeval-agreement  # re-compare

Writes under ``--out``: ``lmeval/<model>/`` (lm-eval's results; its per-item samples stay in
``--work``, they copy the data), ``lcf/`` (lcf's report), ``commands.md`` and ``agreement.md`` /
``agreement.json``. Machine paths are replaced by ``$LCF_DATA_ROOT`` / ``$LCF_CACHE`` in what is
written under ``--out``. Everything runs offline (``HF_HUB_OFFLINE=1``, ``HF_DATASETS_OFFLINE=1``).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TASK_FILES = HERE / "lmeval_tasks"
#: lm-eval result fields that describe this machine (OS, CPU, kernel, git state), not the evaluation
MACHINE_KEYS = ("pretty_env_info", "git_hash", "upper_git_hash")
TASKS = {"arc_easy": "lcf_arc_easy", "arc_challenge": "lcf_arc_challenge", "openbookqa": "lcf_openbookqa"}


def sh(cmd: list[str], env: dict[str, str], log: Path) -> float:
    """Run ``cmd`` (output to ``log``); seconds taken. Raises with the log's tail on failure."""
    t0 = time.time()
    with log.open("w") as f:
        rc = subprocess.call(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
    if rc:
        tail = log.read_text()[-3000:]
        raise SystemExit(f"command failed (exit {rc}): {' '.join(cmd)}\n--- {log} ---\n{tail}")
    return time.time() - t0


class Paths:
    """Replaces this machine's data and cache folders by placeholders in what is written to --out."""

    def __init__(self, data_root: Path, cache: Path, work: Path):
        self.subs = [(str(data_root), "$LCF_DATA_ROOT"), (str(cache), "$LCF_CACHE"), (str(work), "$WORK"),
                     (str(Path.home()), "~")]

    def clean(self, text: str) -> str:
        for real, alias in self.subs:
            text = text.replace(real, alias)
        return text


def write_tasks(work: Path, data_root: Path) -> Path:
    """lm-eval task files with the data root and lm-eval's task folder filled in (outside --out)."""
    import lm_eval

    tasks_dir = Path(lm_eval.__file__).parent / "tasks"
    out = work / "tasks"
    out.mkdir(parents=True, exist_ok=True)
    for f in TASK_FILES.glob("*.yaml"):
        text = f.read_text().replace("{lm_eval_tasks}", str(tasks_dir)).replace("{data_root}", str(data_root))
        (out / f.name).write_text(text)
    return out


def run_lmeval(model: str, folder: Path, tasks: list[str], work: Path, env: dict[str, str], args) -> list[str]:
    task_dir = write_tasks(work, Path(args.data_root).resolve())
    cmd = [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={folder},dtype=float32",
           "--tasks", ",".join(TASKS[t] for t in tasks), "--include_path", str(task_dir), "--device", "cpu",
           "--batch_size", str(args.batch_size), "--output_path", str(work / "lmeval" / model), "--log_samples"]
    if args.limit:  # the documents of lcf's seeded sample (`lcf eval --limit N --seed 0`)
        cmd += ["--samples", json.dumps({TASKS[t]: sample_indices(t, args) for t in tasks}, separators=(",", ":"))]
    secs = sh(cmd, env, work / f"lmeval-{model}.log")
    print(f"lm-eval {model}: {secs:.0f} s", flush=True)
    return cmd


def run_lcf(pair: str, tasks: list[str], work: Path, env: dict[str, str], args) -> list[str]:
    cmd = [sys.executable, "-m", "lcf.cli", "eval", "--pair", pair, "--tasks", *tasks, "--systems", "receiver",
           "sharer",
           "--dtype", "float32", "--device", "cpu", "--latency-runs", "0", "--no-progress", "--batch-size",
           str(args.batch_size), "--data-root", str(args.data_root), "--out", str(work / "lcf")]
    if args.limit:
        cmd += ["--limit", str(args.limit), "--seed", "0"]
    secs = sh(cmd, env, work / "lcf.log")
    print(f"lcf eval: {secs:.0f} s", flush=True)
    return cmd


def sample_indices(task: str, args) -> list[int]:
    """Row numbers (lm-eval's doc ids: file order) of the items ``lcf eval --limit N --seed 0`` evaluates."""
    from lcf.eval.tasks import load_task

    t = load_task(task, data_root=args.data_root, limit=args.limit, seed=0)
    position = {it.id: i for i, it in enumerate(t.all_items())}
    if len(position) != len(t.all_items()):
        raise SystemExit(f"{task}: item ids are not unique; cannot map lcf's sample to lm-eval's documents")
    return [position[it.id] for it in t.items()]


# -- comparison ------------------------------------------------------------------------------------
def lmeval_samples(work: Path, model: str, task: str) -> list[dict]:
    found = sorted((work / "lmeval" / model).rglob(f"samples_{TASKS[task]}_*.jsonl"))
    if not found:
        raise SystemExit(f"no lm-eval samples for {model} / {task} under {work / 'lmeval' / model}; run --steps lmeval")
    return [json.loads(line) for line in found[-1].read_text().splitlines() if line.strip()]


def lmeval_scores(work: Path, model: str, task: str) -> dict[str, float]:
    found = sorted((work / "lmeval" / model).rglob("results_*.json"))
    res = json.loads(found[-1].read_text())["results"][TASKS[task]]
    return {"acc": res["acc,none"], "acc_norm": res["acc_norm,none"]}


def argmax(xs: list[float]) -> int:
    return max(range(len(xs)), key=lambda j: (xs[j], -j))


def compare(models: dict[str, str], tasks: list[str], work: Path) -> dict:
    """Per model and task, over the documents lm-eval scored: how often both pick the same option, both
    scores (lcf's recomputed on those items), and the largest log-likelihood difference."""
    lcf = json.loads((work / "lcf" / "results.json").read_text())
    out: dict = {}
    for system, model in models.items():
        for task in tasks:
            rows = {r["id"]: r for r in lcf["predictions"][system][task]}
            samples = lmeval_samples(work, model, task)
            same = same_norm = both = mine_acc = mine_norm = 0
            max_dll, worst = 0.0, None
            disagree = []
            for s in samples:
                doc = s["doc"]
                lls = [float(r[0]) for r in s["filtered_resps"]]
                choices = doc["choices"]["text"]
                pred, pred_norm = argmax(lls), argmax([ll / len(c) for ll, c in zip(lls, choices)])
                row = rows[doc["id"]]
                if row["gold"] != int(s["target"]):
                    raise SystemExit(f"{task} {doc['id']}: gold {row['gold']} (lcf) vs {s['target']} (lm-eval)")
                mine_acc += row["correct"]
                mine_norm += row["correct_norm"]
                same += row["pred"] == pred
                same_norm += row["pred_norm"] == pred_norm
                both += row["pred"] == pred and row["pred_norm"] == pred_norm
                dll = max(abs(a - b) for a, b in zip(row["scores"], lls))
                if dll > max_dll:
                    max_dll, worst = dll, doc["id"]
                if row["pred"] != pred or row["pred_norm"] != pred_norm:
                    disagree.append({"id": doc["id"], "lmeval_lls": lls, "lcf_lls": row["scores"],
                                     "lmeval_pred": [pred, pred_norm], "lcf_pred": [row["pred"], row["pred_norm"]]})
            n = len(samples)  # lm-eval's documents: all of lcf's items, or a subset of its sample
            ref, mine = lmeval_scores(work, model, task), {"acc": mine_acc / n, "acc_norm": mine_norm / n}
            if abs(ref["acc"] - sum(s["acc"] for s in samples) / n) > 1e-9:
                raise SystemExit(f"{model} / {task}: lm-eval's results and samples disagree; rerun --steps lmeval")
            out[f"{system}/{task}"] = {
                "model": model, "n": n, "lcf_items": len(rows), "same_pick_acc": same / n,
                "same_pick_acc_norm": same_norm / n, "same_pick_both": both / n, "lmeval": ref, "lcf": mine,
                "delta_points": {k: 100 * (mine[k] - ref[k]) for k in ("acc", "acc_norm")},
                "max_abs_loglik_diff": max_dll, "max_diff_item": worst, "disagreements": disagree,
            }
    return out


def table(result: dict) -> str:
    lines = ["| system / task | model | n | same pick (acc) | same pick (acc_norm) | lm-eval acc / acc_norm | "
             "lcf eval acc / acc_norm | delta acc / acc_norm (points) | max abs log-lik diff |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for key, r in result.items():
        lines.append(
            f"| {key} | {r['model']} | {r['n']} | {100 * r['same_pick_acc']:.2f}% | "
            f"{100 * r['same_pick_acc_norm']:.2f}% | "
            f"{100 * r['lmeval']['acc']:.2f} / {100 * r['lmeval']['acc_norm']:.2f} | "
            f"{100 * r['lcf']['acc']:.2f} / {100 * r['lcf']['acc_norm']:.2f} | "
            f"{r['delta_points']['acc']:+.2f} / {r['delta_points']['acc_norm']:+.2f} | "
            f"{r['max_abs_loglik_diff']:.2e} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pair", default="gemma3-to-smollm2", help="pair card whose receiver and sharer are compared")
    ap.add_argument("--tasks", nargs="+", default=["arc_easy", "openbookqa"], choices=sorted(TASKS))
    ap.add_argument("--data-root", default=os.environ.get("LCF_DATA_ROOT", str(HERE.parent.parent / "shared" / "data")))
    ap.add_argument("--out", default=str(HERE.parent / "docs" / "results" / "lmeval-agreement"))
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "lcf-lmeval-work"),
                    help="working folder outside the repository (lm-eval's samples, logs, lcf's report)")
    ap.add_argument("--steps", nargs="+", default=["lmeval", "lcf", "compare"], choices=["lmeval", "lcf", "compare"])
    ap.add_argument("--limit", type=int, default=None,
                    help="items per task: lcf's seeded sample (--seed 0), the same documents for lm-eval (--samples)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--systems", nargs="+", default=["receiver", "sharer"], choices=["receiver", "sharer"],
                    help="which models of the pair lm-eval runs (the lcf step always runs both)")
    args = ap.parse_args()

    from lcf.cards import pair_card
    from lcf.models.loading import cache_root, prepared_dir

    card = pair_card(args.pair)
    models = {"receiver": card.receiver, "sharer": card.sharer}
    lm_models = [models[s] for s in args.systems]
    out = Path(args.out)
    work = Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    paths = Paths(Path(args.data_root).resolve(), cache_root().resolve(), work.resolve())
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               LCF_DATA_ROOT=str(Path(args.data_root).resolve()))
    commands = []
    if "lmeval" in args.steps:
        for model in lm_models:
            from lcf.cards import model_card

            commands.append(run_lmeval(model, prepared_dir(model_card(model)), args.tasks, work, env, args))
    if "lcf" in args.steps:
        commands.append(run_lcf(args.pair, args.tasks, work, env, args))
    for step, cmds in (("lmeval", commands[:-1] if "lcf" in args.steps else commands),
                       ("lcf", commands[-1:] if "lcf" in args.steps else [])):
        if cmds:
            text = "\n\n".join(paths.clean(shlex.join(c).replace(sys.executable, "python")) for c in cmds)
            name = f"commands-{step}" + ("-" + "-".join(args.systems) if step == "lmeval" else "") + ".md"
            (out / name).write_text(f"# Commands run by benchmarks/lmeval_agreement.py\n\n```\n{text}\n```\n")
    if "lmeval" in args.steps or "compare" in args.steps:
        for model in models.values():  # lm-eval's aggregate results (no per-item samples: they copy the data)
            for f in (work / "lmeval" / model).rglob("results_*.json"):
                dest = out / "lmeval" / model / f.name
                dest.parent.mkdir(parents=True, exist_ok=True)
                res = {k: v for k, v in json.loads(f.read_text()).items() if k not in MACHINE_KEYS}
                dest.write_text(paths.clean(json.dumps(res, indent=2)))
    if "lcf" in args.steps or "compare" in args.steps:
        (out / "lcf").mkdir(exist_ok=True)
        for name in ("results.json", "report.md"):
            if (work / "lcf" / name).is_file():
                (out / "lcf" / name).write_text(paths.clean((work / "lcf" / name).read_text()))
    if "compare" in args.steps:
        result = compare(models, args.tasks, work)
        (out / "agreement.json").write_text(json.dumps(result, indent=2))
        md = table(result)
        (out / "agreement.md").write_text(f"# lcf eval vs lm-evaluation-harness\n\n{md}\n")
        print(md)


if __name__ == "__main__":
    main()
