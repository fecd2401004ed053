"""lcf — Latent Cache Flow: KV-cache communication between language models.

``import lcf`` is light: it imports neither torch-heavy trainers nor Lightning/DeepSpeed/OmegaConf.
"""
__version__ = "0.1.0"
