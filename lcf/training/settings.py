"""The ``trainer:`` section of a recipe, validated without loading a model.

Lightning is imported only to check ``trainer.strategy`` options against its strategy signatures."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Literal

#: ``trainer.compile_models`` values: None (eager) or a ``torch.compile`` mode
COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass
class TrainerSettings:
    """Optimisation and run settings. Defaults follow C2C's recipe (AdamW 1e-4, wd 0.01, 10% warmup,
    linear decay, clip 1.0; gate temperature 1.0 -> 0.001), scaled down to CPU-sized runs."""

    max_steps: int = 200
    batch_size: int = 4
    accumulate_grad_batches: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    lr_schedule: Literal["linear", "constant"] = "linear"  # after warmup: linear decay to 0, or the full rate
    grad_clip: float = 1.0
    gate_temperature_start: float = 1.0
    gate_temperature_end: float = 0.001
    gate_anneal_steps: int | None = None  # default: max_steps
    # Gates that learn: their own learning rate (None: lr; a scalar logit moves about lr per Adam step).
    # Their sparsity penalty is a loss term: `losses: [{type: response_ce}, {type: gate_sparsity, ...}]`.
    gate_lr: float | None = None
    val_every_n_steps: int = 50
    limit_val_batches: int | None = None
    checkpoint_every_n_steps: int = 50
    log_every_n_steps: int = 5
    precision: str = "32-true"
    accelerator: str = "auto"
    devices: int | str = "auto"
    num_nodes: int = 1
    strategy: str | dict[str, Any] = "auto"
    num_workers: int = 0
    logger: Literal["csv", "tensorboard", "both"] = "csv"
    progress: Literal["rich", "tqdm", "none"] = "rich"
    threads: int | None = None  # torch CPU threads; default: torch's choice
    combine: Literal["sequential", "sum"] = "sequential"
    # dtype of the frozen sharer and receiver (None: each model card's). bfloat16 with bf16-mixed on GPUs
    # halves their memory and spares autocast re-casting every LLM weight at every step.
    model_dtype: Literal["float32", "bfloat16", "float16"] | None = None
    # CUDA: let torch's scaled-dot-product attention use cuDNN while training. Off by default: with bf16 LLMs
    # it re-plans for every new sequence length, on the host (H200, docs/benchmarks.md: median step 799 ms with
    # 2-6 s steps, 522 ms without); the flash and memory-efficient kernels take over. Restored after training.
    cudnn_attention: bool = False
    # torch.compile the frozen LLMs' decoder bodies for training (None: eager): a torch.compile mode, e.g.
    # "default" (Inductor's fused kernels) or "reduce-overhead" (plus CUDA graphs; best with fixed shapes,
    # data.pad_to_multiple). The first steps of each new shape pay the compilation. Undone after training.
    compile_models: str | None = None

    #: keys of earlier recipes that are loss components now (lcf.training.loss_terms): key -> the new form
    MOVED: ClassVar[dict[str, str]] = {
        "option_loss_weight": "add `losses: [{type: response_ce}, {type: option_ce, weight: W}]`",
        "option_score": "it is the `score:` of option_ce (and of sharer_option_ce, contrast), e.g. "
                        "`losses: [{type: response_ce}, {type: option_ce, weight: 1.0, score: norm}]`",
        "sharer_option_weight": "add `losses: [{type: response_ce}, {type: sharer_option_ce, weight: W}]`",
        "sharer_option_temperature": "it is the `temperature:` of sharer_option_ce, e.g. "
                                     "`losses: [{type: response_ce}, {type: sharer_option_ce, temperature: 0.1}]`",
        "contrast_weight": "add `losses: [{type: response_ce}, {type: option_ce}, {type: contrast, weight: W}]`",
        "contrast_margin": "it is the `margin:` of contrast, e.g. `losses: [..., {type: contrast, margin: 0.2}]`",
        "gate_sparsity": "add `losses: [{type: response_ce}, {type: gate_sparsity, weight: W}]`",
        "gate_target_open": "it is the `target_open:` of gate_sparsity, e.g. "
                            "`losses: [{type: response_ce}, {type: gate_sparsity, weight: 2.0, target_open: 0.33}]`",
    }

    def __post_init__(self):
        problems = []
        if self.max_steps < 1:
            problems.append(f"max_steps must be >= 1 (got {self.max_steps})")
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1 (got {self.batch_size})")
        if not 0 <= self.warmup_ratio < 1:
            problems.append(f"warmup_ratio must lie in [0, 1) (got {self.warmup_ratio})")
        if self.lr_schedule not in ("linear", "constant"):
            problems.append(f"lr_schedule must be 'linear' or 'constant', got {self.lr_schedule!r}")
        if self.lr <= 0:
            problems.append(f"lr must be > 0 (got {self.lr})")
        if self.gate_lr is not None and not self.gate_lr > 0:
            problems.append(f"gate_lr must be > 0 or null (the same as lr), got {self.gate_lr}")
        if self.model_dtype not in (None, "float32", "bfloat16", "float16"):
            problems.append(f"model_dtype must be float32, bfloat16, float16 or null (the card's), got {self.model_dtype!r}")
        if self.compile_models not in COMPILE_MODES:
            modes = ", ".join(m for m in COMPILE_MODES if m)
            problems.append(f"compile_models must be null (eager) or one of {modes}, got {self.compile_models!r}")
        from lcf.training.strategy import check_strategy

        check_strategy(self.strategy, self.accelerator)  # fails at validation time, not after loading models
        if problems:
            raise ValueError("trainer: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
