"""The format-fair own-reading system of `lcf eval-xc` (``full-short``): the receiver reads the whole context after
worked short-answer examples, and the CLI offers every system the evaluation knows."""
from __future__ import annotations

from lcf.cli.choices import XC_SYSTEM_CHOICES
from lcf.data.xc.features import XCExample
from lcf.eval.xc import SHORT_ANSWER_EXAMPLES, XC_SYSTEMS, ReceiverOnly, build_xc_systems


class _Adapter:  # what building and preparing receiver-only systems reads of an adapter
    kind = "per_token"
    sharer = None


def test_full_short_reads_both_parts_after_the_examples():
    item = XCExample(id="1", sharer_context="Ada lives in Oslo.", question="Where does Ada live?", answers=["Oslo"],
                     receiver_context="Ada is a luthier.")
    plain, short = ReceiverOnly(_Adapter(), "full"), ReceiverOnly(_Adapter(), "full-short")
    (text,), view, sent = short.prepare([item])
    assert text == f"{SHORT_ANSWER_EXAMPLES}\n\nText: {plain.prepare([item])[0][0]}"
    assert "Ada is a luthier.\n\nAda lives in Oslo." in text and view is None and sent == [0]
    assert "Answer: Uppsala" in SHORT_ANSWER_EXAMPLES and short.name != plain.name


def test_the_cli_offers_every_evaluation_system():
    assert set(XC_SYSTEM_CHOICES) == set(XC_SYSTEMS)
    names = [s.name for s in build_xc_systems(_Adapter(), ["full", "full-short", "receiver"])]
    assert names == ["receiver alone", "receiver + full context", "receiver + full context, short-answer examples"]


def test_a_per_token_adapter_is_a_cross_context_adapter():
    from lcf.runtime.token_adapter import TokenAdapter

    assert TokenAdapter.is_xc is True  # eval-xc's latent systems accept it (LatentXC checks is_xc)
