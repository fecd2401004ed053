"""lm-evaluation-harness model ``lcf``: any lm-eval task on receiver + adapter, a control, or one model alone.

Needs the optional extra ``lcf[lmeval]`` (lm-eval 0.4.x). lm-eval 0.4 looks models up in its own
registry only (no plugin entry points), so the model is registered when this module is imported.
From the shell, run lm-eval through this module: it registers ``lcf``, then hands the same
arguments to lm-eval's own command line::

    python -m lcf.eval.lmeval_model --model lcf --model_args adapter=DIR,control=mismatched \\
        --tasks arc_easy --batch_size 8 --output_path out/

From Python, import this module before ``lm_eval.simple_evaluate(model="lcf", model_args=...)``,
or pass an instance: ``simple_evaluate(model=LCFLM(adapter=DIR), tasks=[...])``.

model_args:
    adapter: adapter folder, run directory or recipe (as for ``lcf eval``).
    control: ``none`` (the item's own sharer cache), ``zero`` or ``mismatched`` (see
        :mod:`lcf.eval.controls`; the mismatched partner is the next distinct context among all the
        requests lm-eval sends at once, i.e. the next document, as in ``lcf eval``).
    system: ``adapter`` (default), or ``receiver`` / ``sharer`` for a model of the pair alone.
    device, dtype: where and how the models run (default: cuda when available; the cards' dtype).
    batch_size: contexts per forward pass (lm-eval's ``--batch_size``; ``auto`` means 8).

Requests are encoded as lm-eval's HF model encodes them (:mod:`lcf.eval.scoring`): raw text, the
tokenizer's default special tokens, continuation tokens split off the whole text; the sharer reads
the same raw context and its cache is fused over all of it. ``generate_until`` is greedy, stops at
the end of sequence, ``max_gen_toks`` (default 256) or the first ``until`` string (cut off), and
returns the text stripped. ``loglikelihood_rolling`` (perplexity tasks) is not supported: fusion
needs a context the sharer reads.
"""
from __future__ import annotations

import sys
from typing import Any

try:
    import lm_eval.models  # noqa: F401  (lm-eval's own models first: its registry imports them only when empty)
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("lcf.eval.lmeval_model needs lm-evaluation-harness 0.4.x: pip install 'lcf[lmeval]' "
                      "(or pip install 'lm-eval>=0.4,<0.5')") from exc

from lcf.errors import LCFError

SYSTEMS = ("adapter", "receiver", "sharer")


@register_model("lcf")
class LCFLM(LM):
    """lm-eval model running an lcf system (see the module docstring for the arguments)."""

    def __init__(self, adapter: str, control: str = "none", system: str = "adapter", device: str | None = None,
                 dtype: str | None = None, batch_size: int | str = 8, max_gen_toks: int = 256, **_: Any) -> None:
        super().__init__()
        import torch

        from lcf.eval.compose import resolve_adapter
        from lcf.eval.systems import CONTROLS, AdapterSystem, ReceiverAlone, SharerAlone
        from lcf.runtime import load_adapter

        control = "none" if control is None else str(control)  # lm-eval parses model_args "none" as None
        if system not in SYSTEMS:
            raise LCFError(f"lcf lm-eval model: system={system!r} is not one of {', '.join(SYSTEMS)}")
        if control not in CONTROLS:
            raise LCFError(f"lcf lm-eval model: control={control!r} is not one of {', '.join(CONTROLS)}")
        if system != "adapter" and control != "none":
            raise LCFError(f"lcf lm-eval model: control={control} applies to system=adapter, not system={system}")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        loaded = load_adapter(resolve_adapter(adapter), device=device, dtype=dtype)
        self.system = (AdapterSystem(loaded, control) if system == "adapter" else
                       ReceiverAlone(loaded) if system == "receiver" else SharerAlone(loaded))
        self.batch_size = 8 if str(batch_size).startswith("auto") else int(batch_size)
        self.max_gen_toks = int(max_gen_toks)

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.system.tokenizer, "name_or_path", "lcf"))

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """``(sum log p(continuation | context), whether it is the greedy continuation)`` per request;
        the requests of one context share its prefill (and its sharer cache)."""
        pairs = [tuple(r.args) for r in requests]
        index: dict[str, int] = {}
        continuations: list[list[str]] = []
        for context, continuation in pairs:
            if not context:
                raise LCFError("lcf lm-eval model: a request has an empty context; fused systems need a context "
                               "(tasks scored without one, e.g. perplexity or mutual-information metrics, cannot run)")
            if context not in index:
                index[context] = len(index)
                continuations.append([])
            continuations[index[context]].append(continuation)
        scores = self.system.score_continuations(list(index), continuations, batch_size=self.batch_size)
        taken = [0] * len(index)
        out = []
        for context, _ in pairs:
            i = index[context]
            value = scores[i][taken[i]]
            taken[i] += 1
            out.append((float(value), bool(getattr(value, "greedy", False))))
        return out

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        raise LCFError("lcf lm-eval model: loglikelihood_rolling (perplexity tasks such as wikitext) is not "
                       "supported; fusion needs a context the sharer reads. Use loglikelihood or generate_until tasks.")

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Greedy continuations of raw contexts, cut at the first ``until`` string."""
        jobs = []
        for r in requests:
            context, kwargs = r.args[0], dict(r.args[1] if len(r.args) > 1 else {})
            if kwargs.get("do_sample"):
                raise LCFError("lcf lm-eval model: only greedy generation is supported (got do_sample=True)")
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            jobs.append((context, until, int(kwargs.get("max_gen_toks", self.max_gen_toks))))
        out: list[str] = [""] * len(jobs)
        for budget in sorted({b for _, _, b in jobs}):
            idx = [i for i, job in enumerate(jobs) if job[2] == budget]
            texts = self.system.generate([jobs[i][0] for i in idx], budget, batch_size=self.batch_size, raw=True)
            for i, text in zip(idx, texts):
                for stop in jobs[i][1]:
                    if stop and stop in text:
                        text = text.split(stop, 1)[0]
                out[i] = text
        return out


def main(argv: list[str] | None = None) -> None:
    """lm-eval's command line with the ``lcf`` model registered."""
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
