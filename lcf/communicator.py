"""Communicator: frozen sharer(s) + frozen receiver + trainable translator(s).

Training forward (C2C protocol, arXiv 2510.03215): every sharer prefills its prompt; the receiver
prefills all prompt tokens but the last; each translator edits the receiver cache at the aligned
prompt positions; the receiver then runs the last prompt token and the response on the fused cache,
and the loss is next-token cross-entropy on response tokens only. Prefills never compute LM-head
logits. Generated tokens are never fused.

Batches are dicts of tensors (see ``lcf.data.instruct.collate``): receiver prompts LEFT-padded,
responses RIGHT-padded, ``align_index``/``align_mask`` mapping receiver prompt positions to
positions of the padded sharer prompt. For several sharers, ``batch["sharers"]`` is a list of dicts
with keys ``prompt_ids, prompt_mask, align_index, align_mask`` (one per sharer, in order).

Cross-context (LCF-X): a sharer with a *compressor* reads its own context; the compressor turns
that cache into a short summary (``batch["sharer_span_ids"]`` says which span each sharer token
belongs to) and the translator reads summary position 0 at every receiver prompt position, whatever
``align_index`` says. A summary computed elsewhere (a latent message, see :mod:`lcf.runtime.messages`) is
passed as ``sharer_views=`` and the sharer is not run at all — it may even be absent (``None``).

The frozen LLMs are deliberately *not* registered as submodules: ``state_dict()``, optimizers and
checkpoints hold only translator (and compressor) weights, while ``.to()`` still moves the LLMs along.

A *receiver adapter* (``receiver_adapter=``, e.g. :class:`lcf.runtime.receiver_lora.ReceiverLoRA`, already hooked
onto the receiver) is a submodule: trained, checkpointed and moved with the translators. While any of its
parameters trains, the receiver's prompt prefill keeps its gradients.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from lcf.errors import LCFError
from lcf.models.capture import prefill_all_positions
from lcf.models.choices import choice_log_likelihoods
from lcf.models.kv import KVView, cache_kwargs, positions_from_mask, prefill

Combine = Literal["sequential", "sum"]
SharerTransform = Callable[[int, KVView], KVView]


@dataclass
class SharerInputs:
    prompt_ids: torch.Tensor | None
    prompt_mask: torch.Tensor | None
    align_index: torch.Tensor | None
    align_mask: torch.Tensor | None
    span_ids: torch.Tensor | None = None


def _autocast_state(device_type: str) -> dict:
    """This thread's autocast setting for ``device_type``, as keyword arguments of ``torch.autocast``."""
    return {"enabled": torch.is_autocast_enabled(device_type), "dtype": torch.get_autocast_dtype(device_type)}


class Communicator(nn.Module):
    def __init__(
        self,
        receiver: nn.Module,
        sharers: Sequence[nn.Module],
        translators: Sequence[nn.Module],
        combine: Combine = "sequential",
        compressors: Sequence[nn.Module | None] | None = None,
        receiver_adapter: nn.Module | None = None,
    ):
        super().__init__()
        if receiver_adapter is not None and any(s is receiver for s in sharers):
            raise LCFError("a receiver adapter is hooked onto the receiver, and a sharer is that same model object, "
                           "so the adapter would change the sharer too; load the sharer as a model of its own")
        if len(sharers) != len(translators) or not sharers:
            raise LCFError(
                f"Communicator needs one translator per sharer; got {len(sharers)} sharers and "
                f"{len(translators)} translators"
            )
        if combine not in ("sequential", "sum"):
            raise LCFError(f"combine must be 'sequential' or 'sum', got {combine!r}")
        self.translators = nn.ModuleList(translators)
        compressors = list(compressors) if compressors is not None else [None] * len(sharers)
        if len(compressors) != len(sharers):
            raise LCFError(f"Communicator: {len(compressors)} compressors for {len(sharers)} sharers; give one entry "
                           f"per sharer (None for a sharer that shares the receiver's context)")
        # keyed by sharer index: sharers without a compressor have no entry
        self.compressors = nn.ModuleDict({str(i): c for i, c in enumerate(compressors) if c is not None})
        self.combine = combine
        self.receiver_adapter = receiver_adapter  # a submodule (trained and saved), or None
        #: on CUDA, run the sharers' prompt prefills on side streams alongside the receiver's (no effect elsewhere);
        #: None (default): only for batches of 2 or more rows. Measured on an H200 (docs/benchmarks.md): a batch-8
        #: training step 491 -> 395 ms with the overlap, a batch-1 first token 80 -> 85 ms (side streams cost more
        #: than they save when one row's kernels are launch-bound)
        self.overlap_prefills: bool | None = None
        #: on CUDA with :attr:`overlap_prefills`, also queue the side streams' work from a worker thread, so the
        #: host-side cost of launching the two models' kernels overlaps too (batch-1 prefills are launch-bound)
        self.cuda_overlap_threads = False
        #: on CPU, run them in a worker thread with half the intra-op threads; None (default): only when torch
        #: has at least 2 intra-op threads (docs/benchmarks.md: 0.83-0.85x fused latency on 2 idle cores)
        self.cpu_overlap_prefills: bool | None = None
        # plain attributes: not parameters of this module (see the module docstring)
        self.__dict__["receiver"] = receiver
        self.__dict__["sharers"] = list(sharers)
        for m in self._frozen():
            m.eval().requires_grad_(False)

    def _frozen(self) -> list[nn.Module]:
        return [m for m in (self.receiver, *self.sharers) if m is not None]

    # frozen LLMs follow .to()/.cuda()/.half() but stay out of parameters() and state_dict()
    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        for m in self._frozen():
            m._apply(fn, *args, **kwargs)
        return self

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self._frozen():
            m.eval()  # frozen LLMs: no dropout, ever
        return self

    def compressor(self, i: int = 0) -> nn.Module | None:
        """The compressor of sharer ``i`` (None: that sharer is token-aligned with the receiver)."""
        return self.compressors[str(i)] if str(i) in self.compressors else None

    @property
    def translator(self) -> nn.Module:
        return self.translators[0]

    # -- pieces ------------------------------------------------------------------------------
    def sharer_inputs(self, batch: dict) -> list[SharerInputs]:
        if "sharers" in batch:
            items = [SharerInputs(**s) for s in batch["sharers"]]
        else:
            items = [SharerInputs(batch.get("sharer_prompt_ids"), batch.get("sharer_prompt_mask"),
                                  batch.get("align_index"), batch.get("align_mask"), batch.get("sharer_span_ids"))]
        if len(items) != len(self.sharers):
            raise LCFError(f"batch carries inputs for {len(items)} sharers, the communicator has {len(self.sharers)}")
        return items

    @torch.no_grad()
    def _prefill(self, model, ids: torch.Tensor, mask: torch.Tensor) -> KVView:
        return prefill(model, ids, attention_mask=mask, position_ids=positions_from_mask(mask))

    def _receiver_prefill(self, ids: torch.Tensor, mask: torch.Tensor) -> KVView:
        """The receiver's prompt cache; with gradients while its receiver adapter trains."""
        adapter = self.receiver_adapter
        if adapter is not None and torch.is_grad_enabled() and any(p.requires_grad for p in adapter.parameters()):
            return prefill(self.receiver, ids, attention_mask=mask, position_ids=positions_from_mask(mask))
        return self._prefill(self.receiver, ids, mask)

    def _side_stream_prefills(self, batch: dict, given: list) -> tuple[dict[int, KVView], list]:
        """On CUDA (when :attr:`overlap_prefills`): the prompt prefills of the token-aligned sharers queued on
        side streams before the receiver's prefill is queued, so the independent prefills run together.
        Returns ``({sharer index: view}, streams)``; nothing on other devices."""
        ids = batch["receiver_prompt_ids"]
        jobs = [(i, inp) for i, inp in enumerate(self.sharer_inputs(batch)) if given[i] is None
                and self.sharers[i] is not None and self.compressor(i) is None and inp.prompt_ids is not None]
        if not jobs:
            return {}, []
        if not ids.is_cuda:
            overlap = self.cpu_overlap_prefills
            if overlap is None:
                overlap = torch.get_num_threads() >= 2
            return self._thread_prefills(jobs) if overlap else ({}, [])
        overlap = self.overlap_prefills
        if not (ids.shape[0] >= 2 if overlap is None else overlap):
            return {}, []
        main = torch.cuda.current_stream(ids.device)
        views, streams = {}, []
        pool = ThreadPoolExecutor(max_workers=len(jobs)) if self.cuda_overlap_threads else None
        autocast = _autocast_state("cuda")

        def on_stream(stream, i: int, inp: SharerInputs) -> KVView:
            with torch.cuda.stream(stream), torch.autocast("cuda", **autocast):  # both are per thread
                return self._prefill(self.sharers[i], inp.prompt_ids, inp.prompt_mask)
        for i, inp in jobs:
            stream = torch.cuda.Stream(ids.device)
            stream.wait_stream(main)  # the batch's tensors are ready
            views[i] = pool.submit(on_stream, stream, i, inp) if pool else on_stream(stream, i, inp)
            streams.append(stream)
        if pool is not None:
            streams.append(("pool", pool, None))
        return views, streams

    def _thread_prefills(self, jobs: list) -> tuple[dict, list]:
        """CPU (:attr:`cpu_overlap_prefills`): the sharers' prefills in a worker thread while this
        thread runs the receiver's, torch's intra-op threads split between the two."""
        total = torch.get_num_threads()
        worker_threads = max(1, total // 2)
        autocast = _autocast_state("cpu")

        def work(i: int, inp: SharerInputs) -> KVView:
            torch.set_num_threads(worker_threads)
            with torch.autocast("cpu", **autocast):  # autocast is per thread: the worker runs as the caller would
                return self._prefill(self.sharers[i], inp.prompt_ids, inp.prompt_mask)
        pool = ThreadPoolExecutor(max_workers=1)
        futures = {i: pool.submit(work, i, inp) for i, inp in jobs}
        torch.set_num_threads(max(1, total - worker_threads))
        return futures, [("pool", pool, total)]

    @staticmethod
    def _join_side_streams(views: dict, streams: list) -> None:
        """Wait for the side prefills: worker threads (the last entry, ``("pool", pool, intra-op threads to
        restore or None)``) hand over their views, then the main CUDA stream waits for the side streams."""
        if streams and isinstance(streams[-1], tuple):
            _, pool, threads = streams.pop()
            try:
                for i in list(views):
                    views[i] = views[i].result()
            finally:
                if threads is not None:
                    torch.set_num_threads(threads)
                pool.shutdown()
        if not streams:
            return
        main = torch.cuda.current_stream()
        for stream in streams:
            main.wait_stream(stream)
        for view in views.values():  # made on a side stream, used (and freed) on the main one
            for t in (*view.keys, *view.values):
                t.record_stream(main)

    def sharer_view(self, i: int, inp: SharerInputs, sharer_transform: SharerTransform | None = None,
                    prefilled: KVView | None = None) -> KVView:
        """What translator ``i`` reads: sharer ``i``'s prompt cache, or its summary when it has a compressor.
        ``prefilled``: that prompt cache, already computed (see :meth:`_side_stream_prefills`)."""
        sharer = self.sharers[i]
        if sharer is None:
            raise LCFError(f"sharer {i} is not loaded, so its cache cannot be computed here; pass its summary "
                           f"(a latent message) as sharer_views=, or load the adapter with its sharer")
        if inp.prompt_ids is None or inp.prompt_mask is None:
            raise LCFError(f"the batch has no prompt for sharer {i} (sharer_prompt_ids / sharer_prompt_mask)")
        if prefilled is not None:
            view = prefilled
        elif self.compressor(i) is None:
            view = self._prefill(sharer, inp.prompt_ids, inp.prompt_mask)
        else:  # a compressor reads every position, also those a sliding-window layer would evict
            view = prefill_all_positions(sharer, inp.prompt_ids, inp.prompt_mask, positions_from_mask(inp.prompt_mask))
        if sharer_transform is not None:
            view = sharer_transform(i, view)
        compressor = self.compressor(i)
        if compressor is None:
            return view
        if inp.span_ids is None:
            raise LCFError(f"sharer {i} has a compressor, so the batch needs `sharer_span_ids` (the span of each "
                           f"sharer token; build cross-context features with lcf.data.xc.features)")
        return compressor(view, inp.span_ids)

    def fused_prompt_cache(self, batch: dict, fuse: bool = True, sharer_transform: SharerTransform | None = None,
                           sharer_views: Sequence[KVView | None] | None = None) -> KVView:
        """Receiver KVView of all prompt tokens but the last, with the sharers' caches fused in.

        ``sharer_transform(i, view)`` may replace sharer ``i``'s cache before translation (the
        evaluation's controls use it: an all-zero cache, or another item's cache).
        ``sharer_views[i]``, when given, is used as is in place of sharer ``i``'s (compressed) cache."""
        ids, mask = batch["receiver_prompt_ids"], batch["receiver_prompt_mask"]
        if ids.shape[1] < 2:
            raise LCFError("receiver prompts need at least 2 tokens (all but the last are fused)")
        given = list(sharer_views) if sharer_views is not None else [None] * len(self.sharers)
        if fuse and len(given) != len(self.sharers):
            raise LCFError(f"sharer_views: {len(given)} entries for {len(self.sharers)} sharers")
        early, streams = self._side_stream_prefills(batch, given) if fuse else ({}, [])
        try:
            base = self._receiver_prefill(ids[:, :-1], mask[:, :-1])
        finally:
            self._join_side_streams(early, streams)
        if not fuse:
            return base
        view = base
        deltas = []
        for i, (translator, inp) in enumerate(zip(self.translators, self.sharer_inputs(batch))):
            s_view = given[i] if given[i] is not None else self.sharer_view(i, inp, sharer_transform, early.get(i))
            if self.compressor(i) is not None:
                # a summary: the compressor says what each receiver prompt position reads (one slot: position 0)
                s_view, index, amask = self.compressor(i).read(s_view, base, mask[:, :-1].bool())
            else:
                index, amask = inp.align_index[:, :-1], inp.align_mask[:, :-1].bool() & mask[:, :-1].bool()
            if self.combine == "sequential":
                view = translator.fuse(s_view, view, index, amask)
            else:
                deltas.append(translator.fuse(s_view, base, index, amask))
        if self.combine == "sum":
            keys = [base.keys[i] + sum(d.keys[i] - base.keys[i] for d in deltas) for i in range(base.num_layers)]
            values = [base.values[i] + sum(d.values[i] - base.values[i] for d in deltas) for i in range(base.num_layers)]
            view = KVView(keys, values, base.seq_len, base.specs)
        return view

    # -- training ----------------------------------------------------------------------------
    def forward(self, batch: dict, fuse: bool = True, sharer_transform: SharerTransform | None = None,
                choices: bool = False) -> dict[str, torch.Tensor]:
        """Response-token cross-entropy: {'loss': mean over tokens, 'loss_sum', 'tokens'} plus per
        example 'row_loss_sum' and 'row_tokens' (B,), e.g. for scoring options by log-likelihood.
        ``choices``: also 'choice_ll' (B, K), every option's summed log-likelihood on the same fused
        cache (the batch carries all options; see :mod:`lcf.models.choices`)."""
        view = self.fused_prompt_cache(batch, fuse=fuse, sharer_transform=sharer_transform)
        extra = {"choice_ll": choice_log_likelihoods(self.receiver, view, batch)} if choices else {}
        logits = self.continue_logits(batch, view)
        target, tmask = batch["response_ids"], batch["response_mask"].bool()
        logp = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]).float(), target.reshape(-1), reduction="none"
        ).view_as(target)
        row = (logp * tmask).sum(-1)
        tokens = tmask.sum()
        loss_sum = row.sum()
        return {"loss": loss_sum / tokens.clamp(min=1), "loss_sum": loss_sum.detach(), "tokens": tokens,
                "row_loss_sum": row.detach(), "row_tokens": tmask.sum(-1), **extra}

    def continue_logits(self, batch: dict, view: KVView) -> torch.Tensor:
        """Receiver logits over [last prompt token, response...] on top of ``view``."""
        p_ids, p_mask = batch["receiver_prompt_ids"], batch["receiver_prompt_mask"]
        r_ids, r_mask = batch["response_ids"], batch["response_mask"]
        inp = torch.cat([p_ids[:, -1:], r_ids], dim=1)
        attn = torch.cat([p_mask, r_mask], dim=1)
        start = p_mask.long().sum(-1, keepdim=True) - 1
        pos = start + torch.arange(inp.shape[1], device=inp.device)
        cache = cache_kwargs(self.receiver, view.to_cache(self.receiver))
        out = self.receiver(input_ids=inp, attention_mask=attn, position_ids=pos, use_cache=True, **cache)
        return out.logits

    # -- inference ---------------------------------------------------------------------------
    @torch.no_grad()
    def summaries(self, batch: dict) -> list[KVView]:
        """The sender's side of cross-context communication: each compressed sharer's summary."""
        inputs = self.sharer_inputs(batch)
        out = []
        for i in range(len(self.sharers)):
            if self.compressor(i) is None:
                raise LCFError(f"sharer {i} has no compressor: only cross-context adapters produce summaries")
            out.append(self.sharer_view(i, inputs[i]))
        return out

    @torch.no_grad()
    def generate(self, batch: dict, *, fuse: bool = True, max_new_tokens: int = 64,
                 sharer_transform: SharerTransform | None = None, sharer_views: Sequence[KVView | None] | None = None,
                 **generate_kwargs) -> torch.Tensor:
        """New token ids (B, <= max_new_tokens) for the prompts of ``batch``; greedy by default."""
        inputs = self.generation_inputs(batch, fuse=fuse, sharer_transform=sharer_transform, sharer_views=sharer_views)
        generate_kwargs.setdefault("do_sample", False)
        out = self.receiver.generate(**inputs, max_new_tokens=max_new_tokens, **generate_kwargs)
        return out[:, inputs["input_ids"].shape[1]:]

    @torch.no_grad()
    def generation_inputs(self, batch: dict, *, fuse: bool = True, sharer_transform: SharerTransform | None = None,
                          sharer_views: Sequence[KVView | None] | None = None) -> dict:
        """Keyword arguments for ``receiver.generate``: the prompt ids and mask, and a fresh transformers
        cache holding the fused prompt (all tokens but the last; generate runs the last one)."""
        view = self.fused_prompt_cache(batch, fuse=fuse, sharer_transform=sharer_transform, sharer_views=sharer_views)
        return {"input_ids": batch["receiver_prompt_ids"], "attention_mask": batch["receiver_prompt_mask"],
                **cache_kwargs(self.receiver, view.to_cache(self.receiver))}
