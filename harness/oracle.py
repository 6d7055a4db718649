"""The same LoRA run through ``transformers.Trainer``: an oracle for the harness's own training loop.

The harness computes its loss, gradient accumulation, clipping and optimizer steps itself
(``harness.training``). This module runs the identical job through the HF Trainer with the PEFT
model, the way a transformers user would, so the two can be compared step by step:

- the same adapter init: the model is built as ``Run.build`` builds it (same seed), and when the
  harness run's initial trainable weights are given they are copied in;
- the same example order: a fixed data loader yields exactly the micro batches
  ``harness.data.batching.epoch_batches`` gives the harness for each epoch (the Trainer calls its
  ``set_epoch``), already collated;
- transformers' own optimizer (``optim`` adamw_torch, fused on CUDA as the harness's is), parameter
  groups and weight decay (``Trainer.get_decay_parameter_names``), schedule (``get_scheduler`` with
  the Trainer's warmup arithmetic), clipping (``max_grad_norm``) and gradient accumulation.

Loss normalization. The harness divides the summed target-token loss of every micro batch by the
target tokens of the whole accumulated batch (``training_step``). transformers 5 does the same when the
model accepts loss kwargs (``Trainer.model_accepts_loss_kwargs``, true for Llama, whose forward takes
``**kwargs``): ``get_batch_samples`` counts ``labels[..., 1:] != -100`` over all micro batches of the
optimizer step (``num_items_in_batch``), the model's ``ForCausalLMLoss`` sums the cross-entropy and
divides by that count, and the Trainer then skips its own division by the accumulation steps. Each
micro batch therefore contributes sum_mb / total_targets to the gradient in both, and the logged
step loss (the sum of the micro-batch losses, ``logging_steps=1``, so the mean over one step) is
sum / total_targets, the harness's step loss. ``run_oracle`` refuses a model that does not accept
loss kwargs, where the Trainer would average per-micro-batch means instead.

Packed batches carry position ids and no attention mask; ``use_cache`` is switched off on the oracle
model (as in the harness's forward), because with a cache transformers 5.24 builds a plain causal
mask and packed examples would attend to each other.

What is left to differ is floating-point order: the harness scores only target positions in chunks,
transformers the full logits, and the loss terms are summed in another order. On CPU in float32
(and bfloat16 LoRA) the per-step losses agree within 2e-7 relative over two epochs and the final
adapter weights are bitwise equal, because the gradient of each cross-entropy term does not depend
on the order the terms are summed in (measured in tests/unit/test_oracle.py, tests/cpu/test_parity.py).
LoRA dropout draws random numbers in both runs; keep ``lora.dropout: 0`` for a step-by-step comparison.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from harness.adapters import build_adapter
from harness.config import TrainingSection
from harness.data.batching import Batch, epoch_batches
from harness.data.formatting import pad_token_id
from harness.errors import TrainingError
from harness.recipe import Run


@dataclass
class OracleRun:
    """What transformers' Trainer did, step by step, and the weights it ended with."""

    losses: list[float]  # per optimizer step, from the Trainer's log history (logging_steps=1)
    learning_rates: list[float]
    grad_norms: list[float]  # before clipping
    weights: dict[str, torch.Tensor]  # trainable weights after training, on the CPU
    seconds: float


def trainable_weights(model: Any) -> dict[str, torch.Tensor]:
    """A CPU copy of every trainable parameter, by name."""
    return {n: p.detach().float().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def weight_difference(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> tuple[float, float]:
    """(max |ours - theirs| over every weight, max |theirs|): the second sets the scale of the first.
    Different names are an error, not a difference."""
    if ours.keys() != theirs.keys():
        only = sorted(ours.keys() ^ theirs.keys())
        raise TrainingError(f"the two runs train different weights, e.g. {only[0]}")
    diff = max((float((ours[n] - theirs[n]).abs().max()) for n in ours), default=0.0)
    scale = max((float(theirs[n].abs().max()) for n in theirs), default=0.0)
    return diff, scale


class FixedBatches:
    """A data loader over pre-collated micro batches: ``epoch_batches(..., epoch=e)`` for the epoch
    the Trainer sets, in that order."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.epoch = 0
        self.length = len(self.plan(0))

    def plan(self, epoch: int) -> list[Batch]:
        """The micro batches of ``epoch``, with the arguments ``harness.training.Trainer._epoch_plan``
        uses in a single-process run."""
        config, training = self.run.config, self.run.config.training
        return epoch_batches(
            self.run.data.train,
            batch_size=training.batch_size,
            max_length=config.dataset.max_length,
            pad_id=pad_token_id(self.run.tokenizer),
            seed=config.seed,
            epoch=epoch,
            packing=training.packing,
            group_by_length=training.group_by_length,
            pad_to_multiple_of=8 if self.run.device.type == "cuda" else None,
        )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for batch in self.plan(self.epoch):
            yield dict(batch.inputs)


def _trainer_class() -> type:
    from transformers import Trainer

    class FixedOrderTrainer(Trainer):
        """transformers' Trainer with the harness's micro batches as its training data loader."""

        def __init__(self, *args: Any, batches: FixedBatches, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.fixed_batches = batches

        def get_train_dataloader(self) -> Any:
            return self.fixed_batches

    return FixedOrderTrainer


def build_oracle_model(run: Run, initial: dict[str, torch.Tensor] | None = None) -> Any:
    """A second copy of the run's model, built as ``Run.build`` builds it (seeded adapter init);
    ``initial`` (the harness model's trainable weights before training) is copied in when given."""
    torch.manual_seed(run.config.seed)
    model, _summary = build_adapter(run.load_base(), run.config, run.info, run.resolved.served_as)
    if initial is not None:
        parameters = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in initial.items():
                parameters[name].copy_(value)
    model.get_base_model().config.use_cache = False
    return model


def trainer_arguments(run: Run, warmup_steps: float) -> dict[str, Any]:
    """The harness run as transformers ``TrainingArguments`` keywords: batch, accumulation, epochs, step
    cap, optimizer, schedule, clipping, seed, a log line per step, no saves or evals. One mapping for the
    Trainer oracle and the TRL engine, so both replay the same run."""
    config, training = run.config, run.config.training
    return {
        "per_device_train_batch_size": training.batch_size,
        "gradient_accumulation_steps": training.gradient_accumulation_steps,
        "num_train_epochs": training.epochs,
        "max_steps": training.max_steps or -1,
        "learning_rate": training.learning_rate,
        "weight_decay": training.weight_decay,
        "lr_scheduler_type": {"constant": "constant_with_warmup"}.get(training.lr_scheduler, training.lr_scheduler),
        "warmup_steps": warmup_steps,
        "max_grad_norm": training.max_grad_norm,
        "optim": "adamw_torch_fused" if run.device.type == "cuda" else "adamw_torch",
        "logging_strategy": "steps",
        "logging_steps": 1,
        "save_strategy": "no",
        "eval_strategy": "no",
        "report_to": "none",
        "seed": config.seed,
        "use_cpu": run.device.type == "cpu",
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
    }


def warmup_argument(training: TrainingSection, micro_batches_per_epoch: int) -> float:
    """``TrainingArguments.warmup_steps`` for a harness config. transformers reads a value < 1 as a ratio
    and rounds it up, as the harness does; 1.0 would read as one step, so a whole-run warmup is given
    in steps."""
    if training.warmup_steps is not None:
        return training.warmup_steps
    if training.warmup_ratio >= 1:
        steps_per_epoch = math.ceil(micro_batches_per_epoch / training.gradient_accumulation_steps)
        return training.max_steps or steps_per_epoch * training.epochs
    return training.warmup_ratio


def run_oracle(run: Run, *, initial: dict[str, torch.Tensor] | None = None, output_dir: str | None = None) -> OracleRun:
    """Train ``run.config`` through ``transformers.Trainer`` on the run's prepared data (single process)."""
    from transformers import PrinterCallback, ProgressCallback, TrainingArguments

    config, training = run.config, run.config.training
    if config.adapter == "none":
        raise TrainingError("the transformers Trainer oracle compares LoRA runs (adapter: lora or qlora)")
    model = build_oracle_model(run, initial)
    batches = FixedBatches(run)
    warmup = warmup_argument(training, len(batches))
    with tempfile.TemporaryDirectory() as scratch:
        args = TrainingArguments(
            output_dir=output_dir or scratch, **trainer_arguments(run, warmup), remove_unused_columns=False
        )
        trainer = _trainer_class()(model=model, args=args, batches=batches)
        for callback in (PrinterCallback, ProgressCallback):
            trainer.remove_callback(callback)
        if not trainer.model_accepts_loss_kwargs:
            raise TrainingError(
                "transformers' Trainer does not pass num_items_in_batch to this model: it would normalize the "
                "loss per micro batch, not over the accumulated batch as the harness does"
            )
        began = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - began
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    weights = trainable_weights(model)
    return OracleRun(
        losses=[float(e["loss"]) for e in logs],
        learning_rates=[float(e["learning_rate"]) for e in logs],
        grad_norms=[float(e.get("grad_norm", float("nan"))) for e in logs],
        weights=weights,
        seconds=seconds,
    )
