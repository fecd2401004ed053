"""Baselines that do not run a translator: the text relay and the LoRA-tuned receiver.

* :class:`TextRelay` — text-to-text communication: the sharer writes a message of at most
  ``message_tokens`` tokens (greedy), the receiver reads it in its prompt and answers. Its latency
  includes writing the message, as in C2C's comparison (arXiv 2510.03215, Table 3).
* :class:`LoRAReceiver` — the receiver with a PEFT LoRA trained by ``lcf train-lora`` on the same
  data, for the same steps, with about as many trainable parameters as the adapter. An adapter
  whose gain this control matches has tuned the receiver, not transferred what the sharer read.
* :class:`ReceiverLoRAAlone` — a composed adapter's own receiver LoRA without its translator (the
  sharer never runs): what the adapter's gain owes to adaptation alone.

Both answer the same zero-shot user messages as every other system (see :mod:`lcf.eval.systems`).
"""
from __future__ import annotations

import copy
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from lcf.align.templates import TemplateName
from lcf.errors import LCFError
from lcf.eval.systems import CommunicatorSystem, Feature, PlainModel, System
from lcf.models.loading import LoadedModel

#: How the receiver reads the sharer's message by default: the notes come first, so that a prompt
#: ending with "Answer:" still ends the user message.
RELAY_FORMAT = "Notes from another assistant:\n{message}\n\n{prompt}"


def default_sharer_request(prompt: str) -> str:
    """What the sharer is asked to write about: the prompt itself (it answers and reasons)."""
    return prompt


class TextRelay(System):
    """Sharer writes, receiver reads. ``receiver`` is the answering model (its log-likelihoods are
    scored), ``sharer`` the writer; both run in their own templates.

    message_tokens: the sharer's budget (N); it may stop earlier at its end of turn.
    sharer_request: ``prompt -> text`` the sharer is asked (default: the prompt itself).
    relay_format: how the receiver's user message embeds ``{message}`` and ``{prompt}``.
    batch_size: prompts per sharer generation batch (left-padded, greedy).
    """

    def __init__(self, sharer: LoadedModel, receiver: LoadedModel, *, message_tokens: int = 50,
                 sharer_template: TemplateName = "auto", receiver_template: TemplateName = "auto",
                 sharer_request: Callable[[str], str] = default_sharer_request, relay_format: str = RELAY_FORMAT,
                 name: str | None = None, batch_size: int = 8):
        if isinstance(message_tokens, bool) or not isinstance(message_tokens, int) or message_tokens < 1:
            raise LCFError(f"TextRelay: message_tokens must be an integer >= 1, got {message_tokens!r}")
        if "{message}" not in relay_format or "{prompt}" not in relay_format:
            raise LCFError(f"TextRelay: relay_format must contain {{message}} and {{prompt}}, got {relay_format!r}")
        self.writer = PlainModel(sharer, template=sharer_template, name="sharer", kind="sharer")
        self.reader = PlainModel(receiver, template=receiver_template, name="receiver", kind="receiver")
        self.message_tokens, self.sharer_request, self.relay_format = message_tokens, sharer_request, relay_format
        self.batch_size = batch_size
        self.name, self.kind = name or f"text-{message_tokens}", "text"
        self.tokenizer = receiver.tokenizer
        self.bare_model = receiver.model  # the receiver reads the text alone, without a composed adapter's LoRA
        #: the messages written by the last ``_encode`` call, in prompt order (for reports)
        self.last_messages: list[str] = []

    @property
    def device(self) -> torch.device:
        return self.reader.device

    def describe(self) -> dict[str, Any]:
        return super().describe() | {"message_tokens": self.message_tokens, "sharer": self.writer.lm.name,
                                     "receiver": self.reader.lm.name}

    def messages(self, prompts: Sequence[str]) -> list[str]:
        """The sharer's messages for ``prompts`` (greedy, at most ``message_tokens`` tokens each)."""
        requests = [self.sharer_request(p) for p in prompts]
        return self.writer.generate(requests, self.message_tokens, batch_size=self.batch_size)

    def _encode(self, prompts: Sequence[str]) -> list[Feature]:
        self.last_messages = self.messages(prompts)
        relayed = [self.relay_format.format(message=m, prompt=p) for m, p in zip(self.last_messages, prompts)]
        return self.reader._encode(relayed)

    def _encode_raw(self, contexts: Sequence[str]) -> list[Feature]:
        """The sharer writes about the context (in its template); the receiver reads the relay text raw."""
        self.last_messages = self.messages(contexts)
        relayed = [self.relay_format.format(message=m, prompt=c) for m, c in zip(self.last_messages, contexts)]
        return self.reader._encode_raw(relayed)

    def _score_items(self, features: list[Feature], options: list[list[list[int]]]) -> list[list[float]]:
        return self.reader._score_items(features, options)

    def _generate(self, features: list[Feature], max_new_tokens: int, min_new_tokens: int) -> list[str]:
        return self.reader._generate(features, max_new_tokens, min_new_tokens)


# -- LoRA-tuned receiver -------------------------------------------------------------------------------
def find_lora(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """The PEFT folder and ``summary.json`` of a ``lcf train-lora`` run (its run dir or its ``lora/``)."""
    p = Path(path)
    candidates = [p, p / "lora"]
    folder = next((c for c in candidates if (c / "adapter_config.json").is_file()), None)
    if folder is None:
        raise LCFError(
            f"{p} holds no PEFT LoRA adapter (no adapter_config.json in {p} or {p / 'lora'}); train the control "
            f"with `lcf train-lora RECIPE` and pass its run directory"
        )
    summary_path = folder.parent / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    return folder, summary


class LoRAReceiver(PlainModel):
    """The receiver with a LoRA from ``lcf train-lora`` applied (to a separate copy of the receiver,
    so other systems keep using the untouched model).

    receiver: the adapter's receiver (its name is checked against the one the LoRA was trained on;
    the LoRA is applied to a deep copy of it).
    """

    def __init__(self, lora_dir: str | Path, receiver: LoadedModel, *, template: TemplateName = "auto",
                 name: str = "lora receiver"):
        from peft import PeftModel

        folder, summary = find_lora(lora_dir)
        trained_on = summary.get("receiver")
        if trained_on and trained_on != receiver.name:
            raise LCFError(
                f"the LoRA in {folder} was trained on receiver {trained_on!r}, but the adapters being evaluated use "
                f"{receiver.name!r}; train the control from the same recipe (`lcf train-lora RECIPE`)"
            )
        from lcf.runtime.receiver_lora import strip_receiver_lora

        # a copy of the receiver, without the hooks of a composed adapter's receiver LoRA (copied with it)
        peft = PeftModel.from_pretrained(strip_receiver_lora(copy.deepcopy(receiver.model)), str(folder)).eval()
        peft.requires_grad_(False)
        # LoRA layers are injected into the copy itself: use it as a plain causal LM (its body then
        # prefills without LM-head logits, like every other system)
        model = peft.get_base_model()
        self.folder, self.summary = folder, summary
        self._params = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
        self._bytes = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "lora_" in n)
        lm = LoadedModel(name=receiver.name, model=model, tokenizer=receiver.tokenizer, card=receiver.card,
                         path=receiver.path)
        super().__init__(lm, template=template, name=name, kind="lora")

    @property
    def num_parameters(self) -> int:
        return self._params

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def describe(self) -> dict[str, Any]:
        return super().describe() | {"lora": str(self.folder), "rank": self.summary.get("rank"),
                                     "steps": self.summary.get("steps")}


# -- a composed adapter's receiver LoRA alone ------------------------------------------------------------
class ReceiverLoRAAlone(CommunicatorSystem):
    """The receiver with ``adapter``'s receiver LoRA on and no translator (``fuse=False``: the sharer never runs).

    The same prompts as the adapter's (its receiver template); against it, the adapter's gain over this system is
    what the translator adds on top of the adaptation (the adapter's zero and mismatched controls keep the LoRA on
    too). ``label``: the adapter's name in reports; the system is "<label> (LoRA alone)"."""

    def __init__(self, adapter: Any, *, label: str = "adapter"):
        lora = getattr(adapter.communicator, "receiver_adapter", None)
        if lora is None:
            raise LCFError(f"{label} has no receiver LoRA (its recipe had no `receiver_adapter:`); the 'lora_alone' "
                           f"system applies to adapters composed with one")
        super().__init__(adapter, fuse=False, name=f"{label} (LoRA alone)", kind="lora_alone", label=label)
        self.lora = lora

    @property
    def num_parameters(self) -> int:
        return self.lora.num_parameters()

    @property
    def size_bytes(self) -> int:
        return self.lora.size_bytes()

    def describe(self) -> dict[str, Any]:
        return super().describe() | {"receiver_lora_of": self.label, "rank": self.lora.rank, "alpha": self.lora.alpha}
