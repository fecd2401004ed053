"""Per-step cost of tuning the per-token map: ``lcf train``'s Lightning path against a plain hand-written loop.

    python benchmarks/token_map_train.py [--items 48] [--steps 12] [--batch-size 8] [--threads 2]

Both paths train a rank-512 ``token_map`` on the same rows of the same items (invented people with open values
and SQuAD train questions, as ``recipes/xc_token.yaml`` mixes them) with the same losses, optimiser and batch
size, on the real pair, in one process:

- ``lightning``: :class:`lcf.token_map.module.TokenMapModule` fitted by a Lightning Trainer (what ``lcf train``
  runs, without its checkpoint writes: those are a fixed cost of ~1 s every ``checkpoint_every_n_steps``);
- ``loop``: the research driver's loop (sample a batch, backward item by item, clip, Adam step).

Rows are computed once and shared; the map starts from random weights (a step's cost does not depend on
them). Prints seconds per step of each (median over the steps after two warm-up steps) and, last, the ratio
lightning / loop.
"""
from __future__ import annotations

import argparse
import random
import statistics
import time
from types import SimpleNamespace

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=48, help="training items (half people, half SQuAD)")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--data-root", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import lightning as L

    from lcf.data.xc.mix import pick
    from lcf.models.loading import load_model
    from lcf.registry import layer_maps
    from lcf.token_map.data import TokenRowsDataModule, item_rows
    from lcf.token_map.model import TokenMap
    from lcf.token_map.module import TokenMapModule
    from lcf.token_map.rows import TokenRows
    from lcf.training.settings import TrainerSettings
    from lcf.training.loss import TOKEN_MAP, build_losses
    from lcf.translators.base import PairShapes

    r, s = load_model("smollm2-135m-instruct", dtype="float32"), load_model("gemma3-270m", dtype="float32")
    rows = TokenRows(r.model, r.tokenizer, s.model, s.tokenizer)
    half = args.items // 2
    sets = [{"type": "fact_transfer", "values": "open", "phrasing": "varied", "attributes": ["city", "pet", "job"],
             "num_paragraphs": [1, 3], "num_train": 200, "num_val": 10, "seed": 2, "items": half},
            {"type": "squad_xc", "file": "squad/squad_v1.1_train.jsonl", "items": args.items - half}]
    items, _ = pick(sets, "sets", args.data_root, seed=0)
    t0 = time.perf_counter()
    feats, _ = item_rows(rows, items, torch.float16, "rows")
    print(f"rows of {len(feats)} items: {time.perf_counter() - t0:.1f} s")
    n_s, n_r = s.model.config.get_text_config().num_hidden_layers, r.model.config.num_hidden_layers
    shapes = PairShapes.from_configs(s.model.config, r.model.config, layer_maps.build({"type": "terminal"})(n_s, n_r))

    def fresh_map() -> TokenMap:
        torch.manual_seed(0)
        tm = TokenMap(shapes, rank=512)
        with torch.no_grad():
            tm.down.normal_(0, 0.01), tm.up.normal_(0, 0.01)
        return tm

    settings = TrainerSettings(max_steps=args.steps, batch_size=args.batch_size, lr=1e-4, weight_decay=0.0,
                               warmup_ratio=0.0, lr_schedule="constant", grad_clip=1.0, accelerator="cpu", devices=1,
                               progress="none")
    losses = build_losses({"translator": {"type": "token_map"}}, TOKEN_MAP)  # answer_ce + rows_mse, weights 1

    # -- lightning ----------------------------------------------------------------------------------------------
    tm = fresh_map()
    module = TokenMapModule(tm, r.model, rows.receiver_rope, settings, losses)
    dm = TokenRowsDataModule(SimpleNamespace(split_examples=lambda: (items, [])), rows, args.batch_size)
    dm.train_features, dm.val_features, dm._prepared = feats, [], True  # the rows computed above
    module.set_variance(dm.receiver_variance(tm.y_mean))
    stamps: list[float] = []

    class Clock(L.Callback):
        def on_train_batch_end(self, *a, **k) -> None:
            stamps.append(time.perf_counter())

    trainer = L.Trainer(max_steps=args.steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, gradient_clip_val=1.0,
                        num_sanity_val_steps=0, limit_val_batches=0, callbacks=[Clock()])
    trainer.fit(module, datamodule=dm)
    lightning_step = statistics.median(b - a for a, b in zip(stamps[2:], stamps[3:]))

    # -- hand-written loop ---------------------------------------------------------------------------------------
    tm = fresh_map()
    module = TokenMapModule(tm, r.model, rows.receiver_rope, settings, losses)
    module.set_variance(dm.receiver_variance(tm.y_mean))
    opt = torch.optim.Adam(tm.parameters(), lr=1e-4)
    rng, times = random.Random(0), []
    for _ in range(args.steps):
        t = time.perf_counter()
        opt.zero_grad()
        batch = [feats[i] for i in rng.sample(range(len(feats)), min(args.batch_size, len(feats)))]
        for f in batch:
            ce, mse = module.item_losses(f)
            ((ce + mse) / len(batch)).backward()
        torch.nn.utils.clip_grad_norm_(list(tm.parameters()), 1.0)
        opt.step()
        times.append(time.perf_counter() - t)
    loop_step = statistics.median(times[2:])
    print(f"lightning: {lightning_step:.2f} s a step of {args.batch_size}")
    print(f"loop:      {loop_step:.2f} s a step of {args.batch_size}")
    print(f"ratio lightning / loop: {lightning_step / loop_step:.3f}")


if __name__ == "__main__":
    main()
