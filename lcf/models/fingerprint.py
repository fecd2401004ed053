"""Fingerprints of a model's config and tokenizer, so an adapter refuses the wrong models."""
from __future__ import annotations

import hashlib
import json
from typing import Any

# config keys that do not change what the model computes
_VOLATILE = {
    "_name_or_path", "transformers_version", "dtype", "torch_dtype", "use_cache", "quantization_config",
    "architectures", "_attn_implementation", "_attn_implementation_autoset", "attn_implementation",
    "output_attentions", "output_hidden_states", "return_dict", "_commit_hash", "auto_map",
}


def _digest(obj: Any) -> str:
    blob = json.dumps(obj, sort_keys=True, default=str, ensure_ascii=False).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def config_fingerprint(config) -> str:
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    data = {k: v for k, v in cfg.to_dict().items() if k not in _VOLATILE and not k.startswith("_")}
    return _digest(data)


def tokenizer_fingerprint(tokenizer) -> str:
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    specials = {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())}
    return _digest({"vocab": vocab, "specials": specials, "chat_template": tokenizer.chat_template or ""})


def fingerprint(model, tokenizer) -> dict[str, str]:
    return {"config": config_fingerprint(model.config), "tokenizer": tokenizer_fingerprint(tokenizer)}
