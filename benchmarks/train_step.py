"""Training-step time vs the sum of its frozen parts, measured in one run on the real pair.

    python benchmarks/train_step.py [--recipe recipes/quickstart.yaml] [--repeats 5]

Frozen parts: sharer prefill, receiver prefill (all prompt tokens but the last), and the receiver's
forward + backward over [last prompt token, response] on top of that cache (gradients flow into the
cache, as in training). The full step adds the translator (forward, backward) and the optimizer.
Target: full step / frozen parts <= 1.15.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from lcf.communicator import Communicator
from lcf.config import load_recipe, validate_recipe
from lcf.data.instruct import collate
from lcf.models.kv import KVView
from lcf.pair import build_pair
from lcf.data.features import pad_token_id
from lcf.training.run import build_data, build_translator


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="recipes/quickstart.yaml")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    recipe = validate_recipe(load_recipe(args.recipe, ["data.train_size=16", "data.val_size=4"]))
    torch.manual_seed(0)
    pair = build_pair(recipe)
    translator = build_translator(recipe, pair)
    train, _ = build_data(recipe).prepare(pair.receiver.tokenizer, pair.sharer.tokenizer, pair.aligner)
    bs = recipe["trainer"]["batch_size"]
    batch = collate(train[:bs], pad_token_id(pair.receiver.tokenizer), pad_token_id(pair.sharer.tokenizer))
    comm = Communicator(pair.receiver.model, [pair.sharer.model], [translator]).train()
    opt = torch.optim.AdamW(translator.parameters(), lr=1e-4)
    ids, mask = batch["receiver_prompt_ids"], batch["receiver_prompt_mask"]

    def sharer_prefill():
        comm._prefill(pair.sharer.model, batch["sharer_prompt_ids"], batch["sharer_prompt_mask"])

    def receiver_prefill():
        return comm._prefill(pair.receiver.model, ids[:, :-1], mask[:, :-1])

    base = receiver_prefill()

    def receiver_forward_backward():
        keys = [k.detach().requires_grad_() for k in base.keys]
        values = [v.detach().requires_grad_() for v in base.values]
        logits = comm.continue_logits(batch, KVView(keys, values, base.seq_len, base.specs))
        torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), batch["response_ids"].flatten()).backward()

    def full_step():
        comm(batch)["loss"].backward()
        torch.nn.utils.clip_grad_norm_(translator.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    parts = {"sharer prefill": sharer_prefill, "receiver prefill": receiver_prefill,
             "receiver fwd+bwd": receiver_forward_backward, "full training step": full_step}
    for fn in parts.values():
        fn()  # warm-up
    times = {k: [] for k in parts}
    for _ in range(args.repeats):  # interleaved, so drift affects every part alike
        for k, fn in parts.items():
            times[k].append(timed(fn))
    med = {k: statistics.median(v) for k, v in times.items()}
    frozen = med["sharer prefill"] + med["receiver prefill"] + med["receiver fwd+bwd"]
    print(f"batch {bs}: receiver prompt {ids.shape[1]} tokens, sharer prompt {batch['sharer_prompt_ids'].shape[1]}, "
          f"response {batch['response_ids'].shape[1]}; translator {recipe['translator']}; "
          f"median of {args.repeats}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    for k, v in med.items():
        print(f"  {k:<20}{v * 1000:>9.1f} ms")
    print(f"  {'sum of frozen parts':<20}{frozen * 1000:>9.1f} ms")
    print(f"step / frozen parts = {med['full training step'] / frozen:.3f} (target <= 1.15)")


if __name__ == "__main__":
    main()
