"""Alignment between a sharer and a receiver model: prompt templates and token alignment.

``templates`` formats conversations for each model and locates every message's content;
``tokens`` pairs receiver token positions with sharer token positions by maximal string coverage.
"""
from lcf.align.templates import (
    ChatTemplateError,
    FormattedPrompt,
    TemplateError,
    format_example,
    format_messages,
)
from lcf.align.tokens import MaximalCoverageAligner, TokenAlignment, align_messages, align_texts

__all__ = [
    "ChatTemplateError",
    "FormattedPrompt",
    "MaximalCoverageAligner",
    "TemplateError",
    "TokenAlignment",
    "align_messages",
    "align_texts",
    "format_example",
    "format_messages",
]
