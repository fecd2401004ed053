"""The inference runtime: what other code imports to use an exported adapter, without the training stack.

Needs only torch, transformers and safetensors (no Lightning, DeepSpeed or OmegaConf)::

    from lcf.runtime import load_adapter
    adapter = load_adapter("checkpoints/quickstart/adapter")
    print(adapter.generate("Name three primary colours."))

- :mod:`lcf.runtime.format`    the adapter folder (file names, config keys, reading with clear errors)
- :mod:`lcf.runtime.load`      :func:`load_adapter` (any adapter kind)
- :mod:`lcf.runtime.adapter`   :class:`Adapter` (shared-context generation)
- :mod:`lcf.runtime.models`    the models an adapter runs with (model specs, fingerprint and dtype checks)
- :mod:`lcf.runtime.xc`  cross-context ``send`` / ``receive`` (LCF-X)
- :mod:`lcf.runtime.messages`  latent messages: the bytes that travel between a sender and a receiver
- :mod:`lcf.runtime.token_kv`  per-token messages (one short code per context token) and their map
- :mod:`lcf.runtime.token_adapter`  adapters that send them (``load_adapter`` returns one for such a folder)
"""
from lcf.runtime.adapter import Adapter, build_compressor, build_translator
from lcf.runtime.format import (COMPRESSOR_PREFIX, CONFIG_NAME, FORMAT_VERSION, KNOWN_KEYS, WEIGHTS_NAME,
                                AdapterError, load_weights, read_config, split_state)
from lcf.runtime.load import load_adapter
from lcf.runtime.messages import LatentMessage, MessageError
from lcf.runtime.models import check_fingerprint
from lcf.runtime.token_adapter import TokenAdapter
from lcf.runtime.token_kv import TokenMessage

__all__ = [
    "Adapter", "AdapterError", "LatentMessage", "MessageError", "TokenAdapter", "TokenMessage",
    "load_adapter", "read_config", "load_weights",
    "split_state", "build_translator", "build_compressor", "check_fingerprint",
    "FORMAT_VERSION", "CONFIG_NAME", "WEIGHTS_NAME", "COMPRESSOR_PREFIX", "KNOWN_KEYS",
]
