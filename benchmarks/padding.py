"""Padding fraction of a recipe's training batches, plain vs length-bucketed (``data.bucket_by_length``).

    python benchmarks/padding.py [RECIPE] [key=value ...]      # default recipes/quickstart.yaml

Tokenises the training split (no model forward) and walks the batches of the first
``trainer.max_steps`` steps in training order. Receiver side: each batch pads prompts to its longest
prompt and responses to its longest response; the padding fraction is padded positions / all
positions. Prints both fractions and their ratio, measured in this one run.
"""
from __future__ import annotations

import sys

from lcf.config import load_recipe, validate_recipe
from lcf.data.datamodule import receiver_length
from lcf.data.sampling import EpochSampler
from lcf.models import load_tokenizer
from lcf.registry import token_aligners
from lcf.training.run import build_data


def batches(features: list[dict], batch_size: int, steps: int, seed: int, bucket: bool) -> list[list[dict]]:
    lengths = [receiver_length(f) for f in features]
    out, epoch = [], 0
    while len(out) < steps:
        order = EpochSampler(features, batch_size=batch_size, seed=seed, bucket_by_length=bucket,
                             lengths=lengths).order(epoch)
        out += [[features[i] for i in order[j:j + batch_size]] for j in range(0, len(order), batch_size)]
        epoch += 1
    return out[:steps]


def padding_fraction(batch_list: list[list[dict]]) -> tuple[float, int, int]:
    padded = real = 0
    for b in batch_list:
        prompts = [len(f["receiver_prompt_ids"]) for f in b]
        responses = [len(f["response_ids"]) for f in b]
        total = len(b) * (max(prompts) + max(responses))
        padded += total - sum(prompts) - sum(responses)
        real += total
    return padded / real, padded, real


def main(argv: list[str]) -> None:
    recipe_path = argv[0] if argv and "=" not in argv[0] else "recipes/quickstart.yaml"
    overrides = [a for a in argv if "=" in a]
    recipe = validate_recipe(load_recipe(recipe_path, overrides), origin=recipe_path)
    trainer = recipe.get("trainer") or {}
    bs, steps = int(trainer.get("batch_size", 4)), int(trainer.get("max_steps", 200))
    seed = int(recipe["data"].get("seed", 0))
    rtok, stok = load_tokenizer(recipe["receiver"]), load_tokenizer(recipe["sharer"])
    aligner = token_aligners.build(recipe.get("token_alignment") or {"type": "maximal_coverage"}, "token_alignment")
    train, _ = build_data(recipe).prepare(rtok, stok, aligner)
    print(f"{recipe_path}: {len(train)} training examples, batch {bs}, {steps} steps (receiver tokens)")
    plain = padding_fraction(batches(train, bs, steps, seed, bucket=False))
    bucketed = padding_fraction(batches(train, bs, steps, seed, bucket=True))
    for name, (frac, padded, total) in (("plain", plain), ("bucket_by_length", bucketed)):
        print(f"  {name:17s} padding fraction {frac:.4f}  ({padded} padded of {total} positions)")
    print(f"  ratio bucketed / plain: {bucketed[0] / plain[0]:.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])
