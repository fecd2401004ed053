"""Model loading (cards, hub ids, local dirs, pip GGUF packages) and the uniform KV-cache view."""
from lcf.models.loading import LoadedModel, cache_root, load_model, load_tokenizer, prepare

__all__ = ["LoadedModel", "cache_root", "load_model", "load_tokenizer", "prepare"]
