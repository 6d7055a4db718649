"""The research document's success criteria (section 9) as measured checks.

``Validator.run()`` performs one full fine-tune and records every criterion with its measured value,
its threshold and PASS / FAIL / SKIPPED. A failure never hides the others: each check runs if what it
needs exists, and is SKIPPED with the reason otherwise.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from harness import distributed
from harness.checkpoint import ADAPTER_CONFIG, ADAPTER_WEIGHTS, load_adapter
from harness.config import BUILTIN_TASKS, RunConfig
from harness.data.batching import pad_batch
from harness.data.formatting import Example, alpaca_prompt, pad_token_id
from harness.data.tasks import is_correct
from harness.errors import ConfigError, HarnessError
from harness.generation import greedy_generate
from harness.recipe import Run, prepare_run
from harness.training import TrainResult, lr_factor

PASS, FAIL, SKIPPED = "PASS", "FAIL", "SKIPPED"

# A fixed paragraph of general English: its perplexity before and after fine-tuning guards against
# catastrophic forgetting (a narrow task should not wreck the model's language modelling).
REFERENCE_TEXT = (
    "The library opens at nine in the morning and closes at six in the evening. Visitors can borrow up to "
    "five books at a time for three weeks. Children's books are on the ground floor, and the reading room "
    "is upstairs, next to the computers. Please keep your voice down and turn off your phone."
)
TOKENIZER_SAMPLE = (
    "Below is an instruction that describes a task.\n\n### Instruction:\nGive three tips for staying healthy."
    "\n\n### Response:\n1. Eat a balanced diet — fruit & vegetables.\n2. Sleep 7–9 hours. 3) Move daily!"
)
REQUIRED_ADAPTER_KEYS = ("base_model_name_or_path", "r", "lora_alpha", "target_modules", "task_type")


@dataclass
class Criterion:
    id: str
    name: str
    level: str  # minimum | full
    status: str = SKIPPED
    measured: str = ""
    threshold: str = ""
    detail: str = ""


@dataclass
class ValidationOutcome:
    config: RunConfig
    out_dir: Path
    criteria: list[Criterion]
    run: Run | None = None
    train: TrainResult | None = None
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> list[Criterion]:
        return [c for c in self.criteria if c.status == FAIL]

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


CRITERIA: list[tuple[str, str, str]] = [
    ("model_loads", "Model loads from the HF cache", "minimum"),
    ("tokenizer_roundtrip", "Tokenizer encodes and decodes text", "minimum"),
    ("forward_logits", "Forward pass gives valid logits", "minimum"),
    ("adapter_dimensions", "LoRA layers have the dimensions ModelInfo predicts", "minimum"),
    ("training_step", "One training step completes", "minimum"),
    ("first_loss", "First loss is finite and reasonable", "minimum"),
    ("checkpoint_saves", "Checkpoint saves in safetensors format", "minimum"),
    ("checkpoint_loads", "Checkpoint loads and reproduces the logits", "minimum"),
    ("loss_decreases", "Loss decreases over 100+ steps", "full"),
    ("gradient_norms", "Gradient norms neither explode nor vanish", "full"),
    ("lr_schedule", "Learning-rate schedule matches its formula", "full"),
    ("epochs_complete", "Every epoch completes", "full"),
    ("adapter_config", "adapter_config.json is HuggingFace compatible", "full"),
    ("generation", "Generated text is coherent (measured)", "full"),
    ("forgetting_guard", "Reference-text perplexity does not blow up", "full"),
]


class Validator:
    """Run the criteria for one config. ``after_training`` is called with the final checkpoint before it
    is reloaded (tests use it to plant a corrupt file)."""

    def __init__(
        self,
        config: RunConfig,
        out_dir: str | Path,
        *,
        on_criterion: Callable[[Criterion], None] | None = None,
        on_progress: Callable[[str], None] | None = None,
        after_training: Callable[[Path], None] | None = None,
    ) -> None:
        self.config = config
        self.out_dir = Path(out_dir)
        self.on_criterion = on_criterion or (lambda _c: None)
        self.on_progress = on_progress or (lambda _m: None)
        self.after_training = after_training
        self.criteria = {cid: Criterion(cid, name, level) for cid, name, level in CRITERIA}
        self.outcome = ValidationOutcome(config, self.out_dir, list(self.criteria.values()))
        self.base_model: Any = None
        self.world = distributed.current()

    # -- bookkeeping

    def _set(self, cid: str, passed: bool, measured: str, threshold: str, detail: str = "") -> None:
        criterion = self.criteria[cid]
        criterion.status, criterion.measured, criterion.threshold, criterion.detail = (
            PASS if passed else FAIL,
            measured,
            threshold,
            detail,
        )
        self.on_criterion(criterion)

    def _skip(self, cid: str, reason: str) -> None:
        criterion = self.criteria[cid]
        if criterion.status == SKIPPED and not criterion.detail:
            criterion.detail = reason
            self.on_criterion(criterion)

    def _attempt(self, cids: list[str], action: Callable[[], None]) -> bool:
        """Run a check; an unexpected error fails its criteria with a one-line reason instead of
        stopping the run."""
        try:
            action()
            return True
        except Exception as exc:  # noqa: BLE001 - the report must carry on and say what broke
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if not isinstance(exc, HarnessError):
                message = f"{type(exc).__name__}: {message}"
                with (self.out_dir / "errors.log").open("a") as log:
                    log.write(traceback.format_exc() + "\n")
            for cid in cids:
                if self.criteria[cid].status == SKIPPED and not self.criteria[cid].detail:
                    self._set(cid, False, "error", "", message[:300])
            return False

    def _skip_rest(self, reason: str) -> None:
        for criterion in self.criteria.values():
            self._skip(criterion.id, reason)

    # -- the run

    def run(self) -> ValidationOutcome:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        self.on_progress("resolving model and preparing data")
        if not self._attempt(["model_loads"], self._prepare):
            self._skip_rest("needs the model to load")
            return self.outcome
        run = self.outcome.run
        assert run is not None
        self._attempt(["tokenizer_roundtrip"], self._check_tokenizer)
        if not self._attempt(["model_loads"], self._load_model):
            self._skip_rest("needs the model to load")
            return self.outcome
        self._attempt(["forward_logits"], self._check_forward)
        if not self._attempt(["adapter_dimensions"], self._build_adapter):
            self._skip_rest("needs the adapter to build")
            return self.outcome
        if not self._attempt(["training_step", "first_loss"], self._prepare_data):
            self._skip_rest("needs training data")
            return self.outcome
        # Under torchrun every rank trains; rank 0 alone generates, reloads and reports.
        main = self.world.is_main
        if main:
            self._attempt(["generation", "forgetting_guard"], self._measure_before)
        if not self._attempt(["training_step", "first_loss"], self._train):
            self._skip_rest("needs training to complete")
            return self.outcome
        self._check_training_curves()
        if main:
            self._attempt(["checkpoint_saves"], self._check_saved)
            self._attempt(["checkpoint_loads", "adapter_config"], self._check_reload)
            self._attempt(["generation", "forgetting_guard"], self._measure_after)
        distributed.barrier(self.world)
        self._skip_rest("not measured" if main else "measured on rank 0")
        self.outcome.facts["validation_seconds"] = time.perf_counter() - started
        self.outcome.facts["world_size"] = self.world.size
        return self.outcome

    def _prepare(self) -> None:
        self.outcome.run = prepare_run(self.config, with_data=False)

    def _prepare_data(self) -> None:
        run = self.outcome.run
        assert run is not None
        run.data  # noqa: B018 - prepare the data now, so a bad dataset fails this step
        self._fit_epochs_to_step_cap(run)
        self.outcome.facts["data"] = run.data.stats.to_dict() | {
            "source": run.data.source,
            "train_examples": len(run.data.train),
            "validation_examples": len(run.data.validation),
            "held_out_records": len(run.data.held_out),
        }

    def _fit_epochs_to_step_cap(self, run: Run) -> None:
        """A validation checks every stage, epoch boundaries included: under a step cap, the training
        set is cut (first examples of the seeded order) so the configured epochs fit in the cap."""
        training = self.config.training
        if training.max_steps is None:
            return
        steps_per_epoch = training.max_steps // training.epochs
        if steps_per_epoch == 0:
            raise ConfigError(
                f"training.max_steps: {training.max_steps} is fewer than training.epochs ({training.epochs})"
            )
        keep = steps_per_epoch * training.batch_size * training.gradient_accumulation_steps * self.world.size
        if len(run.data.train) > keep and not training.packing:
            self.outcome.facts["step_cap"] = (
                f"training set cut from {len(run.data.train)} to {keep} examples so "
                f"{training.epochs} epoch(s) fit in {training.max_steps} steps"
            )
            run.data.train = run.data.train[:keep]
        capped = dataclasses.replace(training, max_steps=None if len(run.data.train) <= keep else training.max_steps)
        self.config = run.config = dataclasses.replace(self.config, training=capped)
        self.outcome.config = self.config

    def _load_model(self) -> None:
        run = self.outcome.run
        assert run is not None
        began = time.perf_counter()
        self.base_model = run.load_base()
        seconds = time.perf_counter() - began
        resolved = run.resolved
        in_cache = resolved.source != "local"
        what = f"{resolved.served_as}{' (random init)' if resolved.random_init else ''}"
        self._set(
            "model_loads",
            in_cache or resolved.source == "local",
            f"{what}, {resolved.source}, loaded in {seconds:.1f} s",
            "a snapshot from a hub cache or local dir",
            str(resolved.path),
        )

    def _check_tokenizer(self) -> None:
        tokenizer = self.outcome.run.tokenizer  # type: ignore[union-attr]
        ids = tokenizer(TOKENIZER_SAMPLE, add_special_tokens=False)["input_ids"]
        decoded = tokenizer.decode(ids)
        self._set(
            "tokenizer_roundtrip",
            decoded == TOKENIZER_SAMPLE and len(ids) > 0,
            f"{len(ids)} tokens, round trip {'exact' if decoded == TOKENIZER_SAMPLE else 'differs'}",
            "decode(encode(text)) == text",
        )

    def _check_forward(self) -> None:
        run = self.outcome.run
        assert run is not None
        model = self.base_model
        encoded = run.tokenizer(TOKENIZER_SAMPLE, return_tensors="pt").to(run.device)
        with torch.no_grad():
            logits = model(**encoded).logits
        expected = (1, encoded["input_ids"].shape[1], run.info.vocab_size)
        finite = bool(torch.isfinite(logits).all())
        self._set(
            "forward_logits",
            tuple(logits.shape) == expected and finite,
            f"shape {tuple(logits.shape)}, {'all finite' if finite else 'non-finite values'}",
            f"shape {expected}, all finite",
        )

    def _build_adapter(self) -> None:
        from harness.adapters import build_adapter

        run = self.outcome.run
        assert run is not None
        torch.manual_seed(self.config.seed)
        run.model, run.adapter = build_adapter(self.base_model, self.config, run.info, run.resolved.served_as)
        self.base_model = None  # the adapter wraps it now
        summary = run.adapter
        self.outcome.facts["adapter"] = asdict(summary) | {"describe": summary.describe()}
        if self.config.adapter == "none":
            self._set("adapter_dimensions", True, "full fine-tune (no LoRA layers)", "n/a")
            return
        expected = run.info.num_layers * len(summary.target_modules)
        self._set(
            "adapter_dimensions",
            summary.lora_layers == expected,
            f"{summary.lora_layers} layers, every A/B shape = target_dims(ModelInfo)",
            f"{run.info.num_layers} layers x {len(summary.target_modules)} targets = {expected}",
            summary.describe(),
        )

    # -- generation and perplexity, before and after

    def _held_out_sample(self) -> list[Any]:
        run = self.outcome.run
        assert run is not None
        return run.data.held_out[: self.config.validation.eval_examples]

    def _generate(self, records: list[Any]) -> list[str]:
        run = self.outcome.run
        assert run is not None
        prompts = [alpaca_prompt(r) for r in records]
        return greedy_generate(run.model, run.tokenizer, prompts, max_new_tokens=32, batch_size=20)

    def _reference_perplexity(self) -> float:
        run = self.outcome.run
        assert run is not None
        from harness.training import evaluate_loss

        ids = run.tokenizer(REFERENCE_TEXT, add_special_tokens=True)["input_ids"]
        batch = pad_batch([Example(ids, list(ids))], pad_id=0)
        return math.exp(evaluate_loss(run.model, [batch], run.device))

    def _generation_score(self, records: list[Any], outputs: list[str]) -> dict[str, Any]:
        if self.config.dataset.path == BUILTIN_TASKS:
            per_family: dict[str, list[bool]] = {}
            for record, output in zip(records, outputs):
                per_family.setdefault(record.family, []).append(is_correct(record, output))
            correct = [ok for oks in per_family.values() for ok in oks]
            return {
                "accuracy": sum(correct) / max(1, len(correct)),
                "per_family": {k: sum(v) / len(v) for k, v in per_family.items()},
                "examples": [
                    {"prompt_input": r.input, "expected": r.output, "generated": o}
                    for r, o in list(zip(records, outputs))[:5]
                ],
            }
        coherent = [_is_coherent(o) for o in outputs]
        return {
            "coherent_fraction": sum(coherent) / max(1, len(coherent)),
            "examples": [{"instruction": r.instruction, "generated": o} for r, o in list(zip(records, outputs))[:5]],
        }

    def _measure_before(self) -> None:
        if not self.config.validation.generation:
            return
        records = self._held_out_sample()
        self.on_progress(f"generating {len(records)} held-out answers before training")
        self.outcome.facts["before"] = self._generation_score(records, self._generate(records)) | {
            "reference_perplexity": self._reference_perplexity()
        }

    def _measure_after(self) -> None:
        validation = self.config.validation
        if not validation.generation:
            self._skip("generation", "disabled (validation.generation: false)")
            self._skip("forgetting_guard", "disabled (validation.generation: false)")
            return
        before = self.outcome.facts.get("before")
        if before is None:
            self._skip("generation", "needs the before-training measurement")
            self._skip("forgetting_guard", "needs the before-training measurement")
            return
        records = self._held_out_sample()
        self.on_progress(f"generating {len(records)} held-out answers after training")
        after = self._generation_score(records, self._generate(records)) | {
            "reference_perplexity": self._reference_perplexity()
        }
        self.outcome.facts["after"] = after
        if "accuracy" in after:
            gain = after["accuracy"] - before["accuracy"]
            families = ", ".join(f"{k} {v:.0%}" for k, v in after["per_family"].items())
            self._set(
                "generation",
                gain >= validation.min_accuracy_gain,
                f"held-out exact match {before['accuracy']:.0%} -> {after['accuracy']:.0%} "
                f"(+{gain * 100:.0f} points; n={len(records)})",
                f">= +{validation.min_accuracy_gain * 100:.0f} points",
                f"after, per family: {families}",
            )
        else:
            fraction = after["coherent_fraction"]
            self._set(
                "generation",
                fraction >= 0.8,
                f"{fraction:.0%} of {len(records)} held-out answers non-empty and non-repetitive "
                f"(before: {before['coherent_fraction']:.0%})",
                ">= 80%",
                "exact match needs checkable answers (the built-in task set); this data has free text",
            )
        ratio = after["reference_perplexity"] / before["reference_perplexity"]
        self._set(
            "forgetting_guard",
            ratio <= validation.max_perplexity_ratio,
            f"perplexity {before['reference_perplexity']:.2f} -> {after['reference_perplexity']:.2f} (x{ratio:.2f})",
            f"<= x{validation.max_perplexity_ratio:g}",
        )

    # -- training and its curves

    def _train(self) -> None:
        run = self.outcome.run
        assert run is not None
        trainer = run.trainer(output_dir=str(self.out_dir / "training"))
        self.on_progress(
            f"training {trainer.total_steps} steps ({trainer.epochs_planned} epoch(s) of "
            f"{trainer.steps_per_epoch}) on {run.device}"
        )
        self.outcome.facts["plan"] = {
            "total_steps": trainer.total_steps,
            "warmup_steps": trainer.warmup_steps,
            "steps_per_epoch": trainer.steps_per_epoch,
            "epochs": trainer.epochs_planned,
        }
        began = time.perf_counter()
        try:
            result = trainer.train()
        finally:
            self.outcome.facts["training_seconds"] = time.perf_counter() - began
        self.outcome.train = result
        history = result.history
        tokens = sum(r.tokens for r in history)
        self.outcome.facts["throughput"] = {
            "tokens": tokens,
            "target_tokens": sum(r.target_tokens for r in history),
            "tokens_per_s": tokens / max(1e-9, sum(r.seconds for r in history)),
        }
        first = history[0]
        self._set("training_step", True, f"step 1: {first.tokens} tokens in {first.seconds:.2f} s", "completes")
        limit = self.config.validation.max_first_loss
        self._set(
            "first_loss",
            math.isfinite(first.loss) and first.loss < limit,
            f"{first.loss:.4f}",
            f"finite and < {limit:g}",
        )

    def _check_training_curves(self) -> None:
        result = self.outcome.train
        assert result is not None
        validation, training = self.config.validation, self.config.training
        losses = [r.loss for r in result.history]
        window = min(validation.loss_window, max(1, len(losses) // 2))
        first, last = statistics.fmean(losses[:window]), statistics.fmean(losses[-window:])
        steps_ok = len(losses) >= validation.min_steps
        self._set(
            "loss_decreases",
            steps_ok and last <= validation.loss_decrease_ratio * first,
            f"mean of first {window} steps {first:.4f} -> last {window} {last:.4f} (x{last / first:.3f}) "
            f"over {len(losses)} steps",
            f"<= x{validation.loss_decrease_ratio:g} over >= {validation.min_steps} steps",
        )
        norms = [r.grad_norm for r in result.history]
        finite = all(math.isfinite(n) for n in norms)
        median = statistics.median(norms)
        self._set(
            "gradient_norms",
            finite and max(norms) <= validation.grad_norm_max and median >= validation.grad_norm_min,
            f"min {min(norms):.3g}, median {median:.3g}, max {max(norms):.3g}",
            f"all finite, max <= {validation.grad_norm_max:g}, median >= {validation.grad_norm_min:g}",
        )
        mismatches = [
            r.step
            for r in result.history
            if not math.isclose(
                r.lr,
                training.learning_rate
                * lr_factor(r.step - 1, result.total_steps, result.warmup_steps, training.lr_scheduler),
                rel_tol=1e-9,
                abs_tol=1e-15,
            )
        ]
        self._set(
            "lr_schedule",
            not mismatches,
            f"{len(result.history) - len(mismatches)}/{len(result.history)} steps match "
            f"({training.lr_scheduler}, {result.warmup_steps} warmup steps, peak {training.learning_rate:g})",
            "every logged step == formula",
            f"first mismatch at step {mismatches[0]}" if mismatches else "",
        )
        self._set(
            "epochs_complete",
            result.epochs_completed >= result.epochs_planned,
            f"{result.epochs_completed}/{result.epochs_planned} epochs "
            f"({result.steps_per_epoch} steps per epoch, {result.total_steps} steps)",
            "all planned epochs",
        )

    # -- checkpoint save and reload

    def _final_checkpoint(self) -> Path:
        result = self.outcome.train
        assert result is not None and result.checkpoints
        return result.checkpoints[-1]

    def _check_saved(self) -> None:
        from safetensors import safe_open

        final = self._final_checkpoint()
        weights = final / (ADAPTER_WEIGHTS if self.config.adapter != "none" else "model.safetensors")
        with safe_open(str(weights), framework="pt") as handle:
            count = len(list(handle.keys()))
        self._set(
            "checkpoint_saves",
            count > 0,
            f"{weights.name}: {count} tensors, {weights.stat().st_size:,} bytes",
            "a readable safetensors file",
            str(final),
        )
        if self.after_training:
            self.after_training(final)

    def _check_reload(self) -> None:
        run = self.outcome.run
        assert run is not None
        final = self._final_checkpoint()
        if self.config.adapter == "none":
            self._skip("adapter_config", "full fine-tune: no adapter")
        else:
            config = json.loads((final / ADAPTER_CONFIG).read_text())
            missing = [key for key in REQUIRED_ADAPTER_KEYS if key not in config]
            adapter_ok = not missing and config.get("peft_type") == "LORA"
        sample = run.data.validation[:4] or run.data.train[:4]
        batch = pad_batch(sample, pad_id=pad_token_id(run.tokenizer)).to(run.device)
        inputs = {k: v for k, v in batch.inputs.items() if k != "labels"}
        run.model.eval()
        with torch.no_grad():
            trained = run.model(**inputs).logits.float()
            if self.config.adapter == "none":
                from harness.loading import load_model

                reloaded = load_model(final, device=run.device, dtype=run.dtype)
            else:
                reloaded = load_adapter(run.load_base(), final, expected_base=run.resolved.served_as)
            again = reloaded.eval()(**inputs).logits.float()
        diff = float((trained - again).abs().max())
        tolerance = 1e-4 if self.config.adapter != "qlora" else 1e-3
        self._set(
            "checkpoint_loads",
            diff <= tolerance,
            f"max |logit diff| {diff:.2e}",
            f"<= {tolerance:g}",
            f"reloaded {final.name} with peft.PeftModel.from_pretrained" if self.config.adapter != "none" else "",
        )
        if self.config.adapter != "none":
            self._set(
                "adapter_config",
                adapter_ok,
                "accepted by PeftModel.from_pretrained; "
                + (
                    f"missing {', '.join(missing)}"
                    if missing
                    else f"r={config['r']}, lora_alpha={config['lora_alpha']}, task_type={config['task_type']}"
                ),
                "loads, and lists " + ", ".join(REQUIRED_ADAPTER_KEYS),
            )
        del reloaded


def _is_coherent(text: str) -> bool:
    """Non-empty, mostly printable, and not stuck repeating itself (distinct word-bigram ratio >= 0.5)."""
    words = text.split()
    if not words or sum(ch.isprintable() or ch.isspace() for ch in text) < 0.95 * len(text):
        return False
    bigrams = list(zip(words, words[1:]))
    return len(bigrams) < 4 or len(set(bigrams)) / len(bigrams) >= 0.5
