"""What a validation run measured, as plain data: the input of every check.

A run (``harness.validation.collect``) fills an ``Evidence``; the checks (``harness.validation.checks``)
judge it. Keeping the two apart is what lets every check be unit-tested with synthetic evidence that
must PASS and evidence that must FAIL, without training a model.

A piece of evidence is ``None`` when it was not collected: ``errors`` says which pieces failed with
what one-line message, ``absent`` why the others were not measured.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any


@dataclass
class LoadEvidence:
    """How the base model was found and loaded, with the loader's own key report."""

    requested: str
    served_as: str
    source: str  # local | hf_home | user_cache | download | bundled (materialized now)
    path: str
    random_init: bool
    seconds: float
    missing_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)
    mismatched_keys: list[str] = field(default_factory=list)


@dataclass
class TokenizerEvidence:
    text: str
    num_tokens: int
    decoded: str


@dataclass
class ForwardEvidence:
    shape: tuple[int, ...]
    expected_shape: tuple[int, ...]
    finite: bool


@dataclass
class LoraLayer:
    """One adapted module: its LoRA shapes, the shape of the linear layer it wraps (the truth), and
    what ModelInfo predicted from config.json."""

    name: str
    a_shape: tuple[int, ...]
    b_shape: tuple[int, ...]
    base_in: int
    base_out: int
    predicted_in: int
    predicted_out: int


@dataclass
class AdapterEvidence:
    kind: str  # lora | qlora | none
    r: int
    target_modules: list[str]
    num_hidden_layers: int
    layers: list[LoraLayer]
    describe: str


@dataclass
class StepEvidence:
    step: int
    epoch: int
    loss: float
    lr: float
    grad_norm: float  # before clipping
    clipped_norm: float  # after clipping: what the optimizer used
    tokens: int
    target_tokens: int
    seconds: float


@dataclass
class TrainingEvidence:
    steps: list[StepEvidence]
    total_steps: int
    warmup_steps: int
    steps_per_epoch: int
    epochs_planned: int
    epochs_completed: int
    lr_scheduler: str
    learning_rate: float
    max_grad_norm: float
    vocab_size: int
    epoch_target_tokens: int  # target tokens in the training set: what one whole epoch must consume
    seconds: float
    # The dtype the trained parameters (and so their gradients) live in: TRL keeps QLoRA adapters in
    # bfloat16, where clipping's scaled gradient is rounded to 2^-8 relative.
    trainable_dtype: str = "float32"


@dataclass
class HeldOutLoss:
    """Teacher-forced next-token loss on a fixed held-out set, per example (sum and target count), so
    before and after can be compared example by example."""

    sums: list[float]
    counts: list[int]

    @property
    def mean(self) -> float:
        """Loss per target token over the whole set."""
        return sum(self.sums) / max(1, sum(self.counts))

    def per_example(self) -> list[float]:
        return [s / max(1, c) for s, c in zip(self.sums, self.counts)]


def paired_drop(before: HeldOutLoss, after: HeldOutLoss) -> tuple[float, float]:
    """(relative drop of the mean loss, its size in standard errors of the per-example drops).

    The second number is what tells a real improvement from noise: a run that did not learn has
    every per-example difference at zero, and so a z of 0, however the threshold is set."""
    relative = (before.mean - after.mean) / before.mean if before.mean else 0.0
    drops = [b - a for b, a in zip(before.per_example(), after.per_example())]
    if len(drops) < 2:
        return relative, 0.0
    spread = statistics.stdev(drops)
    mean = statistics.fmean(drops)
    if spread == 0:
        return relative, math.inf if mean > 0 else 0.0
    return relative, mean / (spread / math.sqrt(len(drops)))


@dataclass
class Answer:
    """One greedy answer to a held-out prompt."""

    prompt: str
    expected: str
    generated: str
    ended: bool  # stopped with EOS within the token budget
    correct: bool | None = None  # exact match, where the data is checkable (the built-in task set)
    family: str = ""


@dataclass
class ModelState:
    """Measurements of the model at one moment (before or after training)."""

    held_out: HeldOutLoss
    answers: list[Answer] | None  # None: generation not measured (see Evidence.absent)
    reference_perplexity: float | None


@dataclass
class SavedEvidence:
    path: str
    file: str
    readable: bool
    tensor_names: list[str]
    size_bytes: int


@dataclass
class ReloadEvidence:
    max_logit_diff: float
    adapter_effect: float | None  # max |logit diff| reloaded with vs without its adapter
    adapter_config: dict[str, Any] | None
    expected_adapter_config: dict[str, Any] | None
    peft_parse_error: str | None  # what peft.LoraConfig.from_pretrained said, None when it parsed


@dataclass
class OracleEvidence:
    """The same run through transformers' Trainer (``validation.oracle: true``, ``harness.oracle``)."""

    harness_losses: list[float]  # per optimizer step
    oracle_losses: list[float]
    max_weight_diff: float  # max |harness - oracle| over the final trainable weights
    weight_scale: float  # max |weight| of the oracle's final weights: what the difference is relative to
    seconds: float


@dataclass
class EnginesEvidence:
    """The same run through both engines (``validation.compare_engines``): per-step losses of the
    harness loop and of TRL's SFTTrainer."""

    harness_losses: list[float]
    trl_losses: list[float]
    packing: bool  # TRL packed its own rows: step k does not see the harness's examples
    seconds: float  # the second engine's training time


@dataclass
class MemoryEvidence:
    """A CUDA run's peak device memory: PREDICTED by the pre-flight before any weights loaded, MEASURED
    as ``torch.cuda.max_memory_allocated`` since a reset before loading, read after training; and the
    research document's section 5 rows as this project's defaults are predicted to need them."""

    device: str
    predicted_peak_gib: float | None  # None: no pre-flight ran (validate() called without the CLI)
    free_gib: float | None
    measured_peak_gib: float | None
    section5: list[dict[str, Any]]


@dataclass
class Evidence:
    """Everything one validation run measured."""

    adapter_kind: str = "lora"
    data_kind: str = "tasks"  # tasks (exact match) | free_text | conversation
    load: LoadEvidence | None = None
    tokenizer: TokenizerEvidence | None = None
    forward: ForwardEvidence | None = None
    adapter: AdapterEvidence | None = None
    before: ModelState | None = None
    training: TrainingEvidence | None = None
    saved: SavedEvidence | None = None
    reload: ReloadEvidence | None = None
    after: ModelState | None = None
    oracle: OracleEvidence | None = None  # only when validation.oracle asks for it
    engines: EnginesEvidence | None = None  # only when validation.compare_engines asks for it
    memory: MemoryEvidence | None = None  # only on CUDA
    engine: str = "harness"  # the trainer that produced training, saved and after (training.engine)
    errors: dict[str, str] = field(default_factory=dict)
    absent: dict[str, str] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def random_init(self) -> bool:
        return bool(self.load and self.load.random_init)
