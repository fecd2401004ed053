"""LightningModule that trains only the translator(s) of a :class:`~lcf.communicator.Communicator`.

The training loss is the weighted sum of the recipe's loss components (``losses:``, :mod:`lcf.training.loss`;
default: the response cross-entropy), each logged under ``train/<name>``; ``val/loss`` is the response loss."""
from __future__ import annotations

import math
from collections.abc import Sequence

import lightning as L
import torch

from lcf.communicator import Communicator
from lcf.errors import LCFError
from lcf.models.kv import decoder
from lcf.training.loss import Loss, apply_losses, needs_choices
from lcf.training.settings import TrainerSettings
from lcf.training.strategy import gathered, offloads_optimizer, register_gate_parameters
from lcf.translators.base import annealed_temperature


class NonFiniteLossError(LCFError, FloatingPointError):
    """The training loss became NaN or infinite; training stops and the last good checkpoint stays."""


class LCFModule(L.LightningModule):
    def __init__(self, communicator: Communicator, settings: TrainerSettings, losses: Sequence[Loss] | None = None):
        super().__init__()
        self.communicator = communicator
        self.settings = settings
        if losses is None:
            from lcf.training.loss_terms import ResponseCE

            losses = [ResponseCE()]
        self.losses = list(losses)  # plain objects, not submodules: nothing of theirs is trained or checkpointed
        self._cudnn_sdp: bool | None = None  # cuDNN attention's setting before fit, while fit turned it off
        self._compiled: list[torch.nn.Module] = []  # frozen decoder bodies compiled for this fit

    # -- steps -------------------------------------------------------------------------------
    def _anneal(self) -> float:
        s = self.settings
        t = annealed_temperature(self.global_step, s.gate_anneal_steps or s.max_steps,
                                 s.gate_temperature_start, s.gate_temperature_end)
        for tr in self.communicator.translators:
            tr.gates.set_temperature(t)
        return t

    def gate_parameters(self) -> list[torch.nn.Parameter]:
        """The gate logits of every translator (their own optimizer group and the ``gate_sparsity`` term)."""
        return [p for tr in self.communicator.translators for p in tr.gates.parameters() if p.requires_grad]

    def open_fraction(self) -> torch.Tensor | None:
        """Mean gate probability sigmoid(logit) over all gates (differentiable), or None without gates."""
        params = self.gate_parameters()
        if not params:
            return None
        return torch.sigmoid(torch.cat([p.flatten() for p in params])).mean()

    def training_step(self, batch, batch_idx):
        temperature = self._anneal()
        out = self._forward(batch)
        bs = batch["response_ids"].shape[0]
        loss = apply_losses(self, self.losses, out, batch, "train", bs)
        if not torch.isfinite(loss):
            where = f"epoch {self.current_epoch}, batch {batch_idx}, global step {self.global_step}"
            callback = self.trainer.checkpoint_callback if self._trainer is not None else None
            keep = getattr(callback, "last_model_path", "") or "none saved yet"
            raise NonFiniteLossError(
                f"training loss is {loss.item()} at {where}; training stopped. Last good checkpoint: "
                f"{keep}. Lower trainer.lr, check that batch's data, or resume from that checkpoint."
            )
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log("train/gate_temperature", temperature, batch_size=bs)
        if self._trainer is not None and self.trainer.optimizers:
            self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], prog_bar=True, batch_size=bs)
        if self.global_step % max(self.settings.log_every_n_steps, 1) == 0:
            with gathered(self.gate_parameters()):
                open_frac = self.open_fraction()
            if open_frac is not None:
                self.log("gates/mean_open", open_frac.detach(), batch_size=bs)
            for i, tr in enumerate(self.communicator.translators):
                with gathered(tr.gates.parameters()):  # ZeRO-3 partitions the gate logits between steps
                    gate_values = tr.gate_values()
                for layer, (gk, gv) in gate_values.items():
                    prefix = f"gates/s{i}_r{layer}" if len(self.communicator.translators) > 1 else f"gates/r{layer}"
                    self.log(f"{prefix}_k", gk, batch_size=bs)
                    self.log(f"{prefix}_v", gv, batch_size=bs)
        return loss

    def validation_step(self, batch, batch_idx):
        out = self._forward(batch)
        bs = batch["response_ids"].shape[0]
        apply_losses(self, self.losses, out, batch, "val", bs)  # logs each term; val/loss stays the response loss
        self.log("val/loss", out["loss"], prog_bar=True, batch_size=bs, sync_dist=True)
        return out["loss"]

    def _forward(self, batch: dict) -> dict:
        # `choices` only when a term needs the options: communicators that override forward keep working
        return self.communicator(batch, choices=True) if needs_choices(self.losses) else self.communicator(batch)

    def teacher(self) -> torch.nn.Module | None:
        """The sharer model answering alone, the teacher of ``sharer_option_ce`` (one token-aligned sharer), else None."""
        comm = self.communicator
        return comm.sharers[0] if len(comm.sharers) == 1 and comm.compressor(0) is None else None

    def setup(self, stage: str) -> None:
        if self._trainer is not None:
            register_gate_parameters(self, self.trainer.strategy)

    def on_fit_start(self) -> None:
        if self.device.type == "cuda" and not self.settings.cudnn_attention:  # see TrainerSettings.cudnn_attention
            self._cudnn_sdp = torch.backends.cuda.cudnn_sdp_enabled()
            torch.backends.cuda.enable_cudnn_sdp(False)
        if self.settings.compile_models:
            self.compile_frozen(self.settings.compile_models)

    def compile_frozen(self, mode: str) -> None:
        """``torch.compile`` the decoder bodies of the frozen LLMs (prefills and the receiver's continuation
        run through them; the LM head stays eager). Undone by :meth:`uncompile_frozen` (at the end of fit)."""
        comm = self.communicator
        for model in [comm.receiver, *(s for s in comm.sharers if s is not None)]:
            body = decoder(model)
            if body not in self._compiled:
                body.compile(mode=mode)
                self._compiled.append(body)

    def uncompile_frozen(self) -> None:
        for body in self._compiled:
            body._compiled_call_impl = None  # what nn.Module.compile set; None: the eager call
        self._compiled = []

    def on_train_batch_start(self, batch, batch_idx) -> None:
        if self._compiled and self.settings.compile_models == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()  # a new step: the last step's graph outputs may be reused

    def on_fit_end(self) -> None:
        self.uncompile_frozen()
        if self._cudnn_sdp is not None:
            torch.backends.cuda.enable_cudnn_sdp(self._cudnn_sdp)
            self._cudnn_sdp = None

    def on_save_checkpoint(self, checkpoint):
        checkpoint["lcf_settings"] = self.settings.to_dict()

    # -- optimisation ------------------------------------------------------------------------
    def configure_optimizers(self):
        s = self.settings
        # translators and compressors: the frozen LLMs are not submodules of the communicator
        gate_ids = {id(p) for p in self.gate_parameters()} if s.gate_lr is not None else set()
        adapter = self.communicator.receiver_adapter  # a receiver LoRA learns at lr_scale * lr (0: frozen, absent)
        lora = [p for p in adapter.parameters() if p.requires_grad] if adapter is not None else []
        skip = gate_ids | {id(p) for p in lora}
        params = [p for p in self.communicator.parameters() if p.requires_grad and id(p) not in skip]
        extra = []
        if gate_ids:  # gates learn at their own rate, without weight decay (which would pull them shut)
            extra.append({"params": self.gate_parameters(), "weight_decay": 0.0, "lr": s.gate_lr})
        if lora:
            extra.append({"params": lora, "weight_decay": s.weight_decay, "lr": s.lr * adapter.lr_scale})
        return optimizer_and_schedule(self, params, extra)


def optimizer_and_schedule(module: L.LightningModule, params: list[torch.nn.Parameter], extra_groups: list[dict]):
    """AdamW over ``params`` (weight decay on matrices only) and ``extra_groups``, with the trainer section's
    schedule: ``linear`` (warmup, then linear decay to 0) or ``constant`` (warmup, then the full rate)."""
    s: TrainerSettings = module.settings
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": s.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups += extra_groups
    if module._trainer is not None and offloads_optimizer(module.trainer.strategy):
        from deepspeed.ops.adam import DeepSpeedCPUAdam  # DeepSpeed refuses torch's AdamW with CPU offload

        opt = DeepSpeedCPUAdam(groups, lr=s.lr, adamw_mode=True)
    else:
        opt = torch.optim.AdamW(groups, lr=s.lr)
    total = max(s.max_steps, 1)
    warmup = int(math.ceil(s.warmup_ratio * total))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if s.lr_schedule == "constant":
            return 1.0
        return max(0.0, (total - step) / max(total - warmup, 1))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
