"""The same run through TRL's ``SFTTrainer``, the trainer most LoRA users fine-tune with.

What TRL is given, and why it is the same job as the harness loop's:

- the base model as the harness loads it (4-bit for QLoRA) and ``peft_config``: the ``LoraConfig``
  the harness itself wraps with (``harness.adapters.lora_config``), applied by TRL, under the same
  seed, so the initial adapter is the same;
- the harness's tokenized examples as ``input_ids`` plus a ``completion_mask`` (1 on the response
  tokens the harness trains on): the same prompt format, and TRL's own completion-only loss turns the
  mask into labels. TRL's tokenizer pass is not exercised: the data is identical by construction;
- the same epochs, batch size, accumulation, AdamW, weight decay, schedule and warmup, clipping, seed
  and step cap as ``SFTConfig`` arguments; ``training.packing`` turns on TRL's own packing;
- the harness's example order for each epoch (``harness.data.batching.epoch_order``) as the sampler,
  so step k sees the same examples in both engines (with packing TRL builds its own rows, and its own
  shuffled order).

What the evidence is read from: losses, learning rates and pre-clip gradient norms from
``trainer.state.log_history`` (``logging_steps=1``); the gradient the optimizer steps with from a
callback at ``on_pre_optimizer_step`` (after TRL's clipping); target tokens per step from the
``num_items_in_batch`` transformers passes to ``compute_loss``; the adapter from ``save_model``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from harness.adapters import lora_config, resolve_targets
from harness.data.batching import epoch_order
from harness.data.formatting import IGNORE_INDEX
from harness.errors import ConfigError, TrainingError
from harness.oracle import trainer_arguments, warmup_argument
from harness.recipe import Run
from harness.training import StepRecord, TrainResult, memory_mb

FINAL_DIR = "final"


@dataclass
class Observed:
    """What a callback saw of one optimizer step (the log history has the rest)."""

    step: int
    epoch: int  # 0-based
    clipped_norm: float
    tokens: int
    target_tokens: int
    seconds: float


def steps_from_log(
    log_history: list[dict[str, Any]], observed: list[Observed], memory: float = 0.0
) -> list[StepRecord]:
    """One ``StepRecord`` per optimizer step: loss, lr and pre-clip gradient norm from TRL's log history,
    the rest from the callback. A step the log lacks, or a log entry without a loss, lr or gradient
    norm, is an error naming the step: the evidence would otherwise be invented."""
    logged = {int(entry["step"]): entry for entry in log_history if "loss" in entry}
    records = []
    for seen in observed:
        entry = logged.get(seen.step)
        if entry is None:
            raise TrainingError(f"TRL's log history has no loss for step {seen.step} (logging_steps must be 1)")
        missing = [key for key in ("learning_rate", "grad_norm") if entry.get(key) is None]
        if missing:
            raise TrainingError(f"TRL's log history for step {seen.step} has no {missing[0]}")
        records.append(
            StepRecord(
                step=seen.step,
                epoch=seen.epoch,
                loss=float(entry["loss"]),
                lr=float(entry["learning_rate"]),
                grad_norm=float(entry["grad_norm"]),
                clipped_norm=seen.clipped_norm,
                tokens=seen.tokens,
                target_tokens=seen.target_tokens,
                seconds=seen.seconds,
                tokens_per_s=seen.tokens / max(seen.seconds, 1e-9),
                memory_mb=memory,
            )
        )
    return records


def training_dataset(run: Run) -> Any:
    """The run's training examples as a tokenized dataset TRL takes as is: ``input_ids`` and the
    ``completion_mask`` of the tokens the harness computes the loss on."""
    from datasets import Dataset

    examples = run.data.train
    return Dataset.from_dict(
        {
            "input_ids": [e.input_ids for e in examples],
            "completion_mask": [[int(label != IGNORE_INDEX) for label in e.labels] for e in examples],
        }
    )


def _sft_config(run: Run, output_dir: Path, micro_batches_per_epoch: int) -> Any:
    from trl import SFTConfig

    config, training = run.config, run.config.training
    return SFTConfig(
        output_dir=str(output_dir),
        **trainer_arguments(run, warmup_argument(training, micro_batches_per_epoch)),
        bf16=False,  # no autocast: the model is already in the harness's dtype, as in the harness loop
        fp16=False,
        gradient_checkpointing=config.gradient_checkpointing(run.device.type),
        max_length=config.dataset.max_length,
        packing=training.packing,
        completion_only_loss=not config.dataset.train_on_inputs,
    )


def _trainer_class() -> type:
    from transformers import TrainerCallback
    from trl import SFTTrainer

    class HarnessOrderSampler(torch.utils.data.Sampler[int]):
        """The harness's example order for the epoch the Trainer sets."""

        def __init__(self, run: Run) -> None:
            self.run, self.epoch = run, 0
            self.lengths = [len(e.input_ids) for e in run.data.train]

        def set_epoch(self, epoch: int) -> None:
            self.epoch = epoch

        def __len__(self) -> int:
            return len(self.lengths)

        def __iter__(self) -> Any:
            training = self.run.config.training
            return iter(
                epoch_order(
                    self.lengths,
                    training.batch_size,
                    self.run.config.seed,
                    self.epoch,
                    group_by_length=training.group_by_length,
                )
            )

    class Recorder(TrainerCallback):
        """Times each optimizer step and measures the gradient after TRL clipped it."""

        def __init__(self, trainer: Any) -> None:
            self.trainer, self.began, self.clipped = trainer, 0.0, math.nan
            self.observed: list[Observed] = []

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.began = time.perf_counter()
            self.trainer.step_tokens = 0

        def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            # In float32: TRL trains QLoRA adapters in bfloat16, whose own norm would be off by up to 2^-8.
            params = self.trainer.model.parameters()
            grads = [p.grad.float() for p in params if p.requires_grad and p.grad is not None]
            self.clipped = float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.observed.append(
                Observed(
                    step=state.global_step,
                    epoch=max(0, math.ceil(state.epoch - 1e-9) - 1),
                    clipped_norm=self.clipped,
                    tokens=self.trainer.step_tokens,
                    target_tokens=self.trainer.step_targets,
                    seconds=time.perf_counter() - self.began,
                )
            )

    class ObservedSFTTrainer(SFTTrainer):
        """TRL's SFTTrainer, unchanged but for the harness's example order (unpacked data) and counting
        the tokens it computes the loss on."""

        def __init__(self, *args: Any, run: Run, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.run, self.step_tokens, self.step_targets = run, 0, 0
            self.recorder = Recorder(self)
            self.add_callback(self.recorder)

        def _get_train_sampler(self, train_dataset: Any = None) -> Any:
            if self.run.config.training.packing:
                return super()._get_train_sampler(train_dataset)
            return HarnessOrderSampler(self.run)

        def compute_loss(self, model: Any, inputs: Any, return_outputs: bool = False, num_items_in_batch: Any = None):
            if model.training:
                self.step_tokens += int(inputs["attention_mask"].sum()) if "attention_mask" in inputs else 0
                self.step_targets = int(num_items_in_batch) if num_items_in_batch is not None else 0
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    return ObservedSFTTrainer


class TrlTrainer:
    """TRL's SFTTrainer on ``run``'s config and data, with the plan and result of a harness Trainer."""

    def __init__(self, run: Run, output_dir: str | Path) -> None:
        from transformers import PrinterCallback, ProgressCallback

        if run.config.adapter == "none":
            raise ConfigError("training.engine: trl trains LoRA and QLoRA adapters (adapter: lora | qlora), got none")
        self.run, self.output_dir = run, Path(output_dir)
        training = run.config.training
        base = run.load_base()
        # PEFT records the base's name_or_path in adapter_config.json; the harness loads from a local
        # snapshot, a user from the hub id.
        base.name_or_path = run.resolved.served_as
        peft_config = lora_config(run.config, resolve_targets(base, run.config.lora.target_modules))
        dataset = training_dataset(run)
        micro = math.ceil(len(dataset) / training.batch_size)
        torch.manual_seed(run.config.seed)  # as Run.build: the same LoRA init
        self.trainer = _trainer_class()(
            model=base,
            args=_sft_config(run, self.output_dir, micro),
            train_dataset=dataset,
            processing_class=run.tokenizer,
            peft_config=peft_config,
            run=run,
        )
        for callback in (PrinterCallback, ProgressCallback):
            self.trainer.remove_callback(callback)
        micro = math.ceil(len(self.trainer.train_dataset) / training.batch_size)  # packed rows, with packing
        self.steps_per_epoch = math.ceil(micro / training.gradient_accumulation_steps)
        self.total_steps = training.max_steps or self.steps_per_epoch * training.epochs
        self.epochs_planned = math.ceil(self.total_steps / self.steps_per_epoch)
        self.warmup_steps = self.trainer.args.get_warmup_steps(self.total_steps)

    @property
    def model(self) -> Any:
        """The PEFT model TRL trained."""
        return self.trainer.model

    def train(self) -> TrainResult:
        """Train, save the adapter with TRL's ``save_model`` and map the log history into step records."""
        self.trainer.train()
        final = self.output_dir / FINAL_DIR
        self.trainer.save_model(str(final))
        state = self.trainer.state
        history = steps_from_log(state.log_history, self.trainer.recorder.observed, memory_mb(self.run.device))
        return TrainResult(
            output_dir=self.output_dir,
            history=history,
            evals=[],
            total_steps=state.max_steps,
            warmup_steps=self.warmup_steps,
            steps_per_epoch=self.steps_per_epoch,
            epochs_planned=self.epochs_planned,
            epochs_completed=int(state.epoch + 1e-9),
            checkpoints=[final],
        )
