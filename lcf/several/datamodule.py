"""Lightning data module for several sharers (features joined by :mod:`lcf.several.data`)."""
from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

from lcf.data.datamodule import InstructDataModule
from lcf.data.features import pad_token_id
from lcf.several.data import collate_several, join_sharer_features
from lcf.errors import LCFError


class SeveralSharersDataModule(InstructDataModule):
    """:class:`InstructDataModule` for several sharers: ``sharer_tokenizers``, ``aligners`` and
    ``sharer_templates`` (None: the dataset's own) hold one entry per sharer."""

    def __init__(self, data: Any, receiver_tokenizer: Any, sharer_tokenizers: Sequence[Any], aligners: Sequence[Any],
                 batch_size: int, *, sharer_templates: Sequence[str | None] | None = None, **kwargs: Any) -> None:
        if not (len(sharer_tokenizers) == len(aligners) >= 1):
            raise LCFError(f"several sharers: {len(sharer_tokenizers)} tokenizers for {len(aligners)} aligners")
        super().__init__(data, receiver_tokenizer, sharer_tokenizers[0], aligners[0], batch_size=batch_size, **kwargs)
        self.sharer_tokenizers, self.aligners = list(sharer_tokenizers), list(aligners)
        self.sharer_templates = list(sharer_templates or [None] * len(aligners))
        self._collate = partial(collate_several, receiver_pad_id=pad_token_id(receiver_tokenizer),
                                sharer_pad_ids=[pad_token_id(t) for t in sharer_tokenizers])

    def setup(self, stage: str | None = None) -> None:
        if self._prepared:
            return
        original = getattr(self.data, "sharer_template", None)
        trains, vals = [], []
        try:
            for tok, aligner, template in zip(self.sharer_tokenizers, self.aligners, self.sharer_templates):
                if template not in (None, "auto") or hasattr(self.data, "sharer_template"):
                    if not hasattr(self.data, "sharer_template"):
                        raise LCFError(f"several sharers: a sharer template ({template!r}) was given but the "
                                       f"dataset {type(self.data).__name__} has no sharer_template setting")
                    self.data.sharer_template = template
                train, val = self.data.prepare(self.receiver_tokenizer, tok, aligner)
                trains.append(train)
                vals.append(val)
        finally:
            if hasattr(self.data, "sharer_template"):
                self.data.sharer_template = original
        self.train_features, self.val_features = join_sharer_features(trains), join_sharer_features(vals)
        if not self.train_features:
            raise LCFError("several sharers: no training example was kept for every sharer (see the drop reasons "
                           "logged above); raise data.max_prompt_tokens")
        self._prepared = True
