"""The training step and the Trainer: accumulation, schedule, clipping, eval, checkpoints, resume.

Loss is the summed next-token cross-entropy over target tokens divided by the number of target tokens
in the whole accumulated batch, so ``batch 4`` and ``batch 2 x accumulation 2`` give the same update.
Only target positions go through the LM head (about half of alpaca tokens are prompt), in chunks, so
the full [tokens x vocab] logits are never held at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import random
import resource
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from harness import distributed
from harness.checkpoint import (
    CHECKPOINT_PREFIX,
    TrainingState,
    list_checkpoints,
    load_training_state,
    load_weights_into,
    save_checkpoint,
)
from harness.config import RunConfig
from harness.data.batching import Batch, epoch_batches
from harness.data.formatting import IGNORE_INDEX, Example
from harness.errors import CheckpointError, TrainingError

METRICS_FILE = "metrics.jsonl"
LOSS_CHUNK_TOKENS = 2048


# ---------------------------------------------------------------- schedule


def warmup_steps_for(total_steps: int, warmup_ratio: float) -> int:
    return math.ceil(total_steps * warmup_ratio)


def lr_factor(step: int, total_steps: int, warmup_steps: int, kind: str) -> float:
    """Multiplier of the base learning rate used by optimizer step ``step`` (0-based), in the
    convention of transformers' schedulers (which the HF Trainer and axolotl use), so a config gives
    the schedule those tools would give it.

    Warmup: step / warmup_steps (the first step has lr 0). Then, with
    progress = (step - warmup_steps) / (total_steps - warmup_steps): linear 1 - progress,
    cosine 0.5 (1 + cos(pi progress)), constant 1.
    """
    if step < warmup_steps:
        return step / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if kind == "linear":
        return max(0.0, 1.0 - progress)
    if kind == "cosine":
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    return 1.0


def every(steps_per_epoch: int, times_per_epoch: int) -> int:
    """The step interval of axolotl's ``saves_per_epoch`` / ``evals_per_epoch``: it passes the
    fraction 1 / (n x epochs) of the run to transformers, which rounds it up to whole steps."""
    return math.ceil(steps_per_epoch / times_per_epoch)


# ---------------------------------------------------------------- loss and step


def _unwrap(model: Any) -> Any:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def loss_sum_and_count(model: Any, batch: Batch, grad_scale: float = 1.0) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over target tokens, and their number (``batch.num_targets``,
    counted on the host when the batch was built, so nothing here waits for the device).
    ``grad_scale`` is the factor backward will bring (see target_loss_sum)."""
    base = _unwrap(model)
    inputs = {k: v for k, v in batch.inputs.items() if k != "labels"}
    hidden = base.model(**inputs, use_cache=False).last_hidden_state
    labels = batch.inputs["labels"]
    # Position t predicts label t + 1; the last position of each row predicts nothing.
    shifted = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], IGNORE_INDEX)], dim=1).flatten()
    # A static size keeps the selection free of a device-to-host sync (boolean indexing has one).
    index = torch.nonzero_static(shifted != IGNORE_INDEX, size=batch.num_targets).squeeze(1)
    selected = hidden.flatten(0, 1).index_select(0, index)
    weight = base.get_output_embeddings().weight
    targets = shifted.index_select(0, index)
    return target_loss_sum(selected, weight, targets, grad_scale), batch.num_targets


def target_loss_sum(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, grad_scale: float = 1.0
) -> torch.Tensor:
    """sum(cross_entropy(hidden @ weight.T, targets)) in chunks of LOSS_CHUNK_TOKENS rows, in fp32.

    Only one chunk's [rows x vocab] logits exist at a time, in forward and in backward: the gradient
    is computed in forward, chunk by chunk, and what is kept for backward is the gradient of
    ``hidden`` in its own dtype (and of ``weight`` when it trains), never fp32 logits. It is computed
    for an incoming gradient of ``grad_scale`` (what ``(loss * scale).backward()`` brings) and
    rescaled in backward by incoming / grad_scale, which is exactly 1 then: the result is bitwise
    that of autograd through F.cross_entropy, and right for any other incoming gradient."""
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        result: torch.Tensor = _ChunkedCrossEntropy.apply(hidden, weight, targets, grad_scale)
        return result
    total, _, _ = _chunked_cross_entropy(hidden, weight, targets, (False, False), grad_scale)
    return total


def _chunked_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, wants: tuple[bool, bool], grad_scale: float
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """The loss sum and its gradients (times ``grad_scale``) with respect to hidden and weight, each
    only where ``wants`` says.

    Each chunk runs F.cross_entropy and its autograd backward at once, so the arithmetic is that of
    transformers' loss (softmax minus one-hot is computed in the logits, where it cancels) and the
    chunk's fp32 log-softmax is freed before the next chunk."""
    grad_hidden, grad_weight = wants
    total = hidden.new_zeros((), dtype=torch.float32)
    d_hidden = torch.empty_like(hidden) if grad_hidden else None
    d_weight = torch.zeros_like(weight) if grad_weight else None
    for start in range(0, hidden.shape[0], LOSS_CHUNK_TOKENS):
        part = slice(start, start + LOSS_CHUNK_TOKENS)
        rows, head = hidden[part].detach().requires_grad_(grad_hidden), weight.detach().requires_grad_(grad_weight)
        with torch.enable_grad():
            loss = F.cross_entropy(F.linear(rows, head).float(), targets[part], reduction="sum")
        total = total + loss.detach()
        wanted = [tensor for tensor in (rows, head) if tensor.requires_grad]
        if not wanted:
            continue
        grads = list(torch.autograd.grad(loss, wanted, grad_outputs=loss.new_tensor(grad_scale)))
        if d_hidden is not None:
            d_hidden[part] = grads.pop(0)
        if d_weight is not None:
            d_weight += grads.pop(0)
    return total, d_hidden, d_weight


class _ChunkedCrossEntropy(torch.autograd.Function):
    """target_loss_sum with its gradient computed in forward (the loss is a scalar, so backward only
    scales the kept gradients by the incoming one)."""

    @staticmethod
    def forward(
        ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, grad_scale: float
    ) -> torch.Tensor:
        wants = (bool(ctx.needs_input_grad[0]), bool(ctx.needs_input_grad[1]))
        total, d_hidden, d_weight = _chunked_cross_entropy(hidden, weight, targets, wants, grad_scale)
        ctx.save_for_backward(d_hidden, d_weight)
        ctx.grad_scale = grad_scale
        return total

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None]:
        d_hidden, d_weight = ctx.saved_tensors
        factor = grad_output / ctx.grad_scale
        scaled = [None if d is None else d * factor.to(d.dtype) for d in (d_hidden, d_weight)]
        return scaled[0], scaled[1], None, None


@dataclass
class StepResult:
    loss: float
    num_targets: int
    num_tokens: int
    grad_norm: float  # before clipping
    clipped_norm: float  # after clipping: the gradient the optimizer steps with


def training_step(
    model: Any,
    micro_batches: list[Batch] | Batch,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    max_grad_norm: float = math.inf,
    device: torch.device | str | None = None,
    ddp: Any = None,
) -> StepResult:
    """One optimizer step over one or more micro batches (gradient accumulation).

    Returns the token-normalized loss, the target/real token counts and the gradient norm before and
    after clipping;
    raises TrainingError if the loss or the gradient is not finite (the weights are left untouched).
    The loss and norms stay on the device until one read after the last micro batch, so the host
    queues the micro batches without waiting for them.

    ``ddp`` is the DistributedDataParallel-wrapped ``LossModule`` of a data-parallel run: gradients are
    all-reduced once, on the last micro batch (``no_sync`` before it), and the loss is normalized by
    the target tokens of every rank, so N ranks equal one process with N times the micro batch."""
    batches = [micro_batches] if isinstance(micro_batches, Batch) else micro_batches
    world = distributed.current()
    device = device or next(model.parameters()).device
    total_targets = distributed.all_reduce_sum(sum(b.num_targets for b in batches), world, torch.device(device))
    if total_targets == 0:
        raise TrainingError("batch has no target tokens (every label is masked)")
    # DDP averages gradients over ranks; scaling by the world size turns that average into the sum.
    scale = world.size / total_targets
    loss_total = torch.zeros((), dtype=torch.float32, device=device)
    for index, batch in enumerate(batches):
        last = index == len(batches) - 1
        with ddp.no_sync() if ddp is not None and not last else contextlib.nullcontext():
            on_device = batch.to(device)
            if ddp is not None:
                loss_sum = ddp(num_targets=on_device.num_targets, grad_scale=scale, **on_device.inputs)
            else:
                loss_sum, _count = loss_sum_and_count(model, on_device, scale)
            (loss_sum * scale).backward()
        loss_total += loss_sum.detach()
    parameters = [p for p in model.parameters() if p.requires_grad]
    norm = torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
    grads = [p.grad for p in parameters if p.grad is not None]
    clipped = torch.nn.utils.get_total_norm(grads) if grads else norm.new_zeros(())
    summed, grad_norm, clipped_norm = torch.stack([loss_total, norm.float(), clipped.float()]).tolist()
    loss = distributed.all_reduce_sum(summed, world, torch.device(device)) / total_targets
    if not math.isfinite(loss) or not math.isfinite(grad_norm):
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
        what = "loss" if not math.isfinite(loss) else "gradient norm"
        raise TrainingError(f"{what} is {loss if what == 'loss' else grad_norm}")
    if optimizer is not None:
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return StepResult(loss, int(total_targets), sum(b.num_tokens for b in batches), grad_norm, clipped_norm)


class LossModule(torch.nn.Module):
    """The summed target-token loss as a module, so DistributedDataParallel can wrap the whole
    computation (its forward is what prepares the gradient all-reduce)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, num_targets: int, grad_scale: float, **inputs: torch.Tensor) -> torch.Tensor:
        loss_sum, _count = loss_sum_and_count(self.model, Batch(inputs, 0, num_targets), grad_scale)
        return loss_sum


@torch.no_grad()
def evaluate_loss(model: Any, batches: list[Batch], device: torch.device | str) -> float:
    """Mean next-token loss per target token over ``batches``."""
    was_training = model.training
    model.eval()
    total, count = torch.zeros((), device=device), 0
    for batch in batches:
        loss_sum, n = loss_sum_and_count(model, batch.to(device))
        total, count = total + loss_sum, count + n
    model.train(was_training)
    return float(total) / max(1, count)


def build_optimizer(model: Any, learning_rate: float, weight_decay: float, device: torch.device) -> torch.optim.AdamW:
    """AdamW; weight decay only on matrices: norm weights and biases, the vectors, are not decayed;
    fused kernels on CUDA."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (no_decay if parameter.ndim < 2 else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=learning_rate, fused=device.type == "cuda")


def memory_mb(device: torch.device) -> float:
    """Peak memory: allocated on the GPU, resident set size of the process on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------- trainer


@dataclass
class StepRecord:
    step: int
    epoch: int
    loss: float
    lr: float
    grad_norm: float
    clipped_norm: float
    tokens: int
    target_tokens: int
    seconds: float
    tokens_per_s: float
    memory_mb: float


@dataclass
class TrainResult:
    output_dir: Path
    history: list[StepRecord]
    evals: list[dict[str, float]]
    total_steps: int
    warmup_steps: int
    steps_per_epoch: int
    epochs_planned: int
    epochs_completed: int
    checkpoints: list[Path] = field(default_factory=list)
    resumed_from: int = 0
    skipped: list[dict[str, Any]] = field(default_factory=list)


def data_fingerprint(examples: list[Example]) -> str:
    """A short hash of the tokenized examples (ids and labels, in order): a checkpoint remembers what
    it was trained on, so a resume on other data is refused."""
    digest = hashlib.sha256()
    for example in examples:
        digest.update(json.dumps([example.input_ids, example.labels]).encode())
    return digest.hexdigest()[:16]


class Trainer:
    """Runs ``config.training`` over prepared data, writing metrics and checkpoints to ``output_dir``."""

    def __init__(
        self,
        model: Any,
        config: RunConfig,
        train: list[Example],
        validation: list[Example],
        *,
        pad_id: int,
        device: torch.device,
        output_dir: str | Path,
        on_step: Callable[[StepRecord], None] | None = None,
        base_model_id: str | None = None,
    ) -> None:
        self.model, self.config, self.training = model, config, config.training
        self.base_model_id = base_model_id
        self.train_examples, self.validation_examples = train, validation
        self.pad_id, self.device, self.output_dir = pad_id, device, Path(output_dir)
        self.on_step = on_step
        self.stop_signal = 0
        self.data_fingerprint = data_fingerprint(train)
        self.skipped: list[dict[str, Any]] = []  # non-finite steps skipped so far (the skip_nonfinite budget)
        self.world = distributed.current()
        distributed.check_same_config(config.to_dict(), self.world)
        self.accumulation = self.training.gradient_accumulation_steps
        micro_per_epoch = len(self._epoch_plan(0))
        self.steps_per_epoch = math.ceil(micro_per_epoch / self.accumulation)
        self.total_steps = self.training.max_steps or self.steps_per_epoch * self.training.epochs
        self.epochs_planned = math.ceil(self.total_steps / self.steps_per_epoch)
        self.warmup_steps = (
            self.training.warmup_steps
            if self.training.warmup_steps is not None
            else warmup_steps_for(self.total_steps, self.training.warmup_ratio)
        )
        per_epoch = self.training.saves_per_epoch, self.training.evals_per_epoch
        self.save_steps = every(self.steps_per_epoch, per_epoch[0]) if per_epoch[0] else self.training.save_steps
        self.eval_steps = every(self.steps_per_epoch, per_epoch[1]) if per_epoch[1] else self.training.eval_steps
        self.optimizer = build_optimizer(model, self.training.learning_rate, self.training.weight_decay, device)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, self.total_steps, self.warmup_steps, self.training.lr_scheduler)
        )
        self.eval_batches = (
            epoch_batches(
                validation,
                batch_size=self.training.batch_size,
                max_length=config.dataset.max_length,
                pad_id=pad_id,
                seed=config.seed,
                epoch=0,
                shuffle=False,
            )[: self.training.eval_batches]
            if validation
            else []
        )

    def _epoch_plan(self, epoch: int) -> list[Batch]:
        return epoch_batches(
            self.train_examples,
            batch_size=self.training.batch_size,
            max_length=self.config.dataset.max_length,
            pad_id=self.pad_id,
            seed=self.config.seed,
            epoch=epoch,
            packing=self.training.packing,
            group_by_length=self.training.group_by_length,
            pad_to_multiple_of=8 if self.device.type == "cuda" else None,
            rank=self.world.rank,
            world_size=self.world.size,
        )

    # -- persistence (rank 0 only in a data-parallel run)

    def _metrics(self, record: dict[str, Any]) -> None:
        if not self.world.is_main:
            return
        with (self.output_dir / METRICS_FILE).open("a") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()

    def _truncate_metrics(self, step: int) -> None:
        """On resume, drop logged lines past the checkpoint: they will be produced again."""
        path = self.output_dir / METRICS_FILE
        if path.is_file() and self.world.is_main:
            kept = [line for line in path.read_text().splitlines() if line and json.loads(line).get("step", 0) <= step]
            path.write_text("".join(line + "\n" for line in kept))

    def _save(self, step: int, epoch: int, batch_in_epoch: int) -> Path:
        state = TrainingState(
            step,
            epoch,
            batch_in_epoch,
            self.optimizer.state_dict(),
            self.scheduler.state_dict(),
            {"per_rank": distributed.all_gather(_rng_state(), self.world)},
            self._plan_identity() | {"skipped": self.skipped},
        )
        directory = self.output_dir / f"{CHECKPOINT_PREFIX}{step:06d}"
        if self.world.is_main:
            try:
                save_checkpoint(self.model, directory, state)
            except OSError as exc:  # a full disk or a lost mount: training cannot keep its promise to resume
                raise TrainingError(f"step {step}: cannot write {directory}: {exc.strerror or exc}") from None
        distributed.barrier(self.world)
        return directory

    def _plan_identity(self) -> dict[str, Any]:
        """What a resumed run must share with the run that wrote the checkpoint, or it would not
        continue it: the same schedule length, seed (data order, dropout), number of ranks (the
        global batch) and the same tokenized training set."""
        return {
            "total_steps": self.total_steps,
            "seed": self.config.seed,
            "world_size": self.world.size,
            "data_fingerprint": self.data_fingerprint,
        }

    def _restore(self, checkpoint_dir: Path) -> TrainingState:
        state = load_training_state(checkpoint_dir)
        if state.extra.get("total_steps") != self.total_steps:
            raise CheckpointError(
                f"{checkpoint_dir}: planned for {state.extra.get('total_steps')} steps, this run "
                f"plans {self.total_steps}; resume with the same config"
            )
        for key, ours in self._plan_identity().items():
            theirs = state.extra.get(key)
            if theirs != ours:
                raise CheckpointError(
                    f"{checkpoint_dir}: written with {key} {theirs}, this run has {ours}; "
                    "resume with the same config, data and number of ranks"
                )
        load_weights_into(self.model, checkpoint_dir, expected_base=self.base_model_id)
        self.optimizer.load_state_dict(state.optimizer)
        self.scheduler.load_state_dict(state.scheduler)
        _set_rng_state(state.rng["per_rank"][self.world.rank])  # same world size: checked above
        self.skipped = list(state.extra.get("skipped", []))
        return state

    # -- the loop

    def request_stop(self, signum: int) -> None:
        """Ask the loop to stop after the optimizer step in progress (a signal handler calls this)."""
        self.stop_signal = signum

    def train(self, resume_from: str | Path | None = None) -> TrainResult:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        step, epoch, batch_in_epoch = 0, 0, 0
        last_good: Path | None = None
        if resume_from is not None:
            state = self._restore(Path(resume_from))
            step, epoch, batch_in_epoch = state.step, state.epoch, state.batch_in_epoch
            last_good = Path(resume_from)
            self._truncate_metrics(step)
        else:
            # Each rank draws its own dropout masks, as one process with the global batch would
            # draw different masks for different rows (the LoRA init was seeded alike on every rank).
            torch.manual_seed(self.config.seed + self.world.rank)
            random.seed(self.config.seed + self.world.rank)
        result = TrainResult(
            self.output_dir,
            [],
            [],
            self.total_steps,
            self.warmup_steps,
            self.steps_per_epoch,
            self.epochs_planned,
            epoch,
            resumed_from=step,
            skipped=self.skipped,
        )
        self.model.train()
        progress = _progress(self.total_steps, step, enabled=self.world.is_main)
        if self.training.compile:
            # In place, so parameter names (and so checkpoints) stay those of the uncompiled model.
            _unwrap(self.model).model.compile(dynamic=True)
        ddp = None
        if self.world.distributed:
            ddp = torch.nn.parallel.DistributedDataParallel(
                LossModule(self.model),
                device_ids=[self.world.local_rank] if self.device.type == "cuda" else None,
            )
        plan = self._epoch_plan(epoch)
        while step < self.total_steps:
            start = batch_in_epoch * self.accumulation
            if start >= len(plan):
                epoch, batch_in_epoch = epoch + 1, 0
                self._metrics({"type": "epoch_end", "step": step, "epoch": epoch})
                plan = self._epoch_plan(epoch)
                continue
            group = plan[start : start + self.accumulation]
            lr = self.optimizer.param_groups[0]["lr"]
            began = time.perf_counter()
            try:
                outcome = training_step(
                    self.model,
                    group,
                    self.optimizer,
                    max_grad_norm=self.training.max_grad_norm,
                    device=self.device,
                    ddp=ddp,
                )
            except TrainingError as exc:
                batch_in_epoch += 1  # the bad batch is consumed either way
                if len(result.skipped) < self.training.skip_nonfinite:
                    result.skipped.append({"step": step + 1, "error": str(exc)})
                    self._metrics({"type": "skipped", "step": step + 1, "error": str(exc)})
                    continue
                kept = f"last good checkpoint: {last_good}" if last_good else "no checkpoint was saved yet"
                self._metrics({"type": "error", "step": step + 1, "error": str(exc)})
                raise TrainingError(f"step {step + 1}: {exc}; stopped, {kept}") from None
            except torch.cuda.OutOfMemoryError:
                peak = memory_mb(self.device) / 1024
                raise TrainingError(
                    f"step {step + 1}: CUDA out of memory (peak {peak:.2f} GB allocated); try a smaller "
                    "training.batch_size with more gradient_accumulation_steps, training.gradient_checkpointing: "
                    "true, or adapter: qlora"
                ) from None
            self.scheduler.step()
            seconds = time.perf_counter() - began
            step, batch_in_epoch = step + 1, batch_in_epoch + 1
            record = StepRecord(
                step,
                epoch,
                outcome.loss,
                lr,
                outcome.grad_norm,
                outcome.clipped_norm,
                outcome.num_tokens,
                outcome.num_targets,
                seconds,
                outcome.num_tokens / seconds,
                memory_mb(self.device),
            )
            result.history.append(record)
            self._metrics({"type": "train", **asdict(record)})
            progress.update(1)
            progress.set_postfix(loss=f"{outcome.loss:.3f}", lr=f"{lr:.2e}")
            if self.on_step:
                self.on_step(record)
            if self.eval_steps and self.eval_batches and step % self.eval_steps == 0:
                eval_loss = evaluate_loss(self.model, self.eval_batches, self.device)
                result.evals.append({"step": step, "eval_loss": eval_loss})
                self._metrics({"type": "eval", "step": step, "eval_loss": eval_loss})
            if self.world.distributed:
                # A signal may reach the ranks at different steps: stop together, at the first.
                asked = distributed.all_reduce_sum(float(self.stop_signal or 0), self.world, self.device)
                self.stop_signal = self.stop_signal or (int(signal.SIGTERM) if asked else 0)
            if step % self.save_steps == 0 or step == self.total_steps or self.stop_signal:
                last_good = self._save(step, epoch, batch_in_epoch)
                result.checkpoints.append(last_good)
            if self.stop_signal and step < self.total_steps:
                progress.close()
                self._metrics({"type": "interrupted", "step": step, "signal": self.stop_signal})
                raise TrainingInterrupted(self.stop_signal, step, last_good)
        progress.close()
        finished_epoch = batch_in_epoch * self.accumulation >= len(plan)
        result.epochs_completed = epoch + 1 if finished_epoch else epoch
        if finished_epoch:
            self._metrics({"type": "epoch_end", "step": step, "epoch": epoch + 1})
        return result


class TrainingInterrupted(Exception):
    """Training stopped on a signal after writing a checkpoint at ``step``."""

    def __init__(self, signum: int, step: int, checkpoint: Path | None) -> None:
        super().__init__(f"stopped by signal {signum} at step {step}")
        self.signum, self.step, self.checkpoint = signum, step, checkpoint


def _progress(total: int, initial: int, enabled: bool = True) -> Any:
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc="train",
        unit="step",
        disable=not (enabled and sys.stderr.isatty()),
        dynamic_ncols=True,
    )


def refuse_foreign_folder(folder: Path, *, overwrite: bool) -> None:
    """A non-empty folder that is not a previous harness run is not written into without --overwrite."""
    if overwrite or not folder.is_dir():
        return
    foreign = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise TrainingError(
            f"{folder}: exists and holds other files ({shown}); choose an empty folder or pass --overwrite"
        )


def prepare_output_dir(output_dir: Path, *, resuming: bool, overwrite: bool) -> None:
    """Refuse to write a new run over a previous one, or into a folder of other files, unless asked;
    nothing is lost by accident. ``overwrite`` replaces a previous run's checkpoints and metrics and
    never deletes files harness did not write."""
    previous = list_checkpoints(output_dir) or (output_dir / METRICS_FILE).is_file()
    if not previous:
        refuse_foreign_folder(output_dir, overwrite=overwrite)
        return
    if resuming:
        return
    if not overwrite:
        raise TrainingError(
            f"{output_dir}: holds a previous run (checkpoints or {METRICS_FILE}); "
            "pass --resume to continue it or --overwrite to replace it"
        )
    import shutil

    for path in output_dir.iterdir():
        if path.name.startswith(CHECKPOINT_PREFIX) and path.is_dir():
            shutil.rmtree(path)
    (output_dir / METRICS_FILE).unlink(missing_ok=True)


def find_resume_checkpoint(output_dir: str | Path) -> Path:
    checkpoints = list_checkpoints(output_dir)
    if not checkpoints:
        raise CheckpointError(f"{output_dir}: no complete checkpoint to resume from")
    return checkpoints[-1]
