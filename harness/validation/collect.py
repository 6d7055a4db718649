"""One validation run: load, adapt, measure, train, save, reload, measure again, recording ``Evidence``.

Nothing here judges. Each stage stores what it measured; a stage that raises records its one-line
error under the evidence it was collecting, and the stages that cannot run without it record why.
Under torchrun every rank trains; rank 0 alone measures the model before and after, reloads and reports.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from harness import distributed
from harness.checkpoint import ADAPTER_CONFIG, ADAPTER_WEIGHTS, load_adapter
from harness.config import BUILTIN_TASKS, RunConfig
from harness.data.batching import pack_examples, packed_prefix, pad_batch
from harness.data.formatting import IGNORE_INDEX, Example, PreparedData, pad_token_id, prompt_ids, reference_answer
from harness.data.tasks import is_correct
from harness.errors import ConfigError, HarnessError
from harness.generation import generate_ids
from harness.memory.measure import cuda_peak_gib, reset_peak
from harness.memory.tables import predict_rows
from harness.model_info import target_dims
from harness.recipe import Run, prepare_run
from harness.reference import reference_verdict
from harness.training import TrainResult
from harness.validation.evidence import (
    AdapterEvidence,
    Answer,
    EnginesEvidence,
    Evidence,
    ForwardEvidence,
    HeldOutLoss,
    LoadEvidence,
    LoraLayer,
    MemoryEvidence,
    ModelState,
    OracleEvidence,
    ReloadEvidence,
    SavedEvidence,
    StepEvidence,
    TokenizerEvidence,
    TrainingEvidence,
)

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
EVAL_BATCH = 8


class StageFailed(Exception):
    """A stage failed and the stages after it cannot run; ``reason`` says so in the report."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def fit_epochs_to_step_cap(
    config: RunConfig, data: PreparedData, world_size: int
) -> tuple[RunConfig, PreparedData, str]:
    """A validation checks every stage, epoch boundaries included, so a step cap (``--max-steps N``)
    becomes whole epochs of at least N steps in all: the training set is cut to the first examples
    that fill ceil(N / epochs) steps per epoch, or, when it is too small for that, more epochs are
    trained. Returns a new config and data, and a note for the report ('' when nothing changed)."""
    training = config.training
    if training.max_steps is None:
        return config, data, ""
    per_epoch = math.ceil(training.max_steps / training.epochs)
    units_per_step = training.batch_size * training.gradient_accumulation_steps * world_size
    wanted_units = per_epoch * units_per_step
    keep = packed_prefix(data.train, config.dataset.max_length, wanted_units) if training.packing else wanted_units
    epochs, note = training.epochs, ""
    if len(data.train) > keep:
        note = (
            f"training set cut from {len(data.train)} to {keep} examples so {training.epochs} epoch(s) of "
            f"{per_epoch} steps fill --max-steps {training.max_steps}"
        )
        data = dataclasses.replace(data, train=data.train[:keep])
    else:
        max_length = config.dataset.max_length
        available_units = len(pack_examples(data.train, max_length)) if training.packing else len(data.train)
        micro = math.ceil(available_units / (training.batch_size * world_size))
        steps = max(1, math.ceil(micro / training.gradient_accumulation_steps))
        epochs = max(training.epochs, math.ceil(training.max_steps / steps))
        if epochs != training.epochs:
            note = (
                f"{epochs} epochs of {steps} steps (the whole training set) to reach --max-steps {training.max_steps}"
            )
    capped = dataclasses.replace(training, max_steps=None, epochs=epochs)
    return dataclasses.replace(config, training=capped), data, note


def shifted_targets(example: Example) -> int:
    """Label positions a next-token loss scores (every label but the first can be predicted)."""
    return sum(1 for label in example.labels[1:] if label != IGNORE_INDEX)


@torch.no_grad()
def held_out_loss(model: Any, examples: list[Example], pad_id: int, device: torch.device) -> HeldOutLoss:
    """Per-example summed next-token loss over target tokens, in the order of ``examples``. Only target
    positions go through the LM head, as in training: the full [tokens x vocab] logits of a batch would
    cost more than the forward pass itself on a CPU. Batches are of similar lengths (alpaca's padding
    was a third of every batch), which changes no example's loss: padding is masked."""
    was_training = model.training
    model.eval()
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = base.get_output_embeddings()
    by_length = sorted(range(len(examples)), key=lambda index: len(examples[index].input_ids))
    sums: list[float] = [0.0] * len(examples)
    counts: list[int] = [0] * len(examples)
    try:
        for start in range(0, len(examples), EVAL_BATCH):
            indices = by_length[start : start + EVAL_BATCH]
            batch = pad_batch([examples[i] for i in indices], pad_id=pad_id).to(device)
            inputs = {k: v for k, v in batch.inputs.items() if k != "labels"}
            hidden = base.model(**inputs, use_cache=False).last_hidden_state[:, :-1]
            labels = batch.inputs["labels"][:, 1:]
            selected = labels != IGNORE_INDEX
            losses = F.cross_entropy(head(hidden[selected]).float(), labels[selected], reduction="none")
            rows = selected.nonzero()[:, 0]
            per_row = torch.zeros(labels.shape[0], dtype=torch.float32, device=losses.device)
            per_row.index_add_(0, rows, losses)
            for index, total, count in zip(indices, per_row.tolist(), selected.sum(dim=1).tolist(), strict=True):
                sums[index], counts[index] = total, count
    finally:
        model.train(was_training)
    return HeldOutLoss(sums, counts)


class EvidenceRun:
    """Collects ``Evidence`` for one config. ``after_training`` is called with the final checkpoint
    before it is reloaded (tests use it to plant a corrupt file)."""

    def __init__(
        self,
        config: RunConfig,
        out_dir: str | Path,
        *,
        on_progress: Callable[[str], None] | None = None,
        after_training: Callable[[Path], None] | None = None,
        preflight: dict[str, Any] | None = None,
    ) -> None:
        self.config = config
        self.preflight = preflight
        self.out_dir = Path(out_dir)
        self.progress = on_progress or (lambda _m: None)
        self.after_training = after_training
        self.world = distributed.current()
        self.evidence = Evidence(adapter_kind=config.adapter)
        self.run: Run | None = None
        self.base_model: Any = None
        self.result: TrainResult | None = None

    # -- stage bookkeeping

    def _stage(self, name: str, action: Callable[[], None]) -> bool:
        """Run a stage; an error is recorded under ``name`` as one line, and the run carries on."""
        try:
            action()
            return True
        except Exception as exc:  # noqa: BLE001 - the report must carry on and say what broke
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if not isinstance(exc, HarnessError):
                message = f"{type(exc).__name__}: {message}"
                with (self.out_dir / "errors.log").open("a") as log:
                    log.write(traceback.format_exc() + "\n")
            self.evidence.errors[name] = message[:300]
            return False

    def _require(self, name: str, action: Callable[[], None], reason: str) -> None:
        if not self._stage(name, action):
            raise StageFailed(reason)

    def collect(self) -> Evidence:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        try:
            self._collect()
        except StageFailed as stop:
            for name in "load tokenizer forward adapter before training saved reload after oracle engines".split():
                if getattr(self.evidence, name) is None:
                    self.evidence.absent.setdefault(name, stop.reason)
        self.evidence.facts["validation_seconds"] = time.perf_counter() - started
        self.evidence.facts["world_size"] = self.world.size
        return self.evidence

    def _collect(self) -> None:
        main = self.world.is_main
        self.progress("resolving model and preparing data")
        self._require("load", self._prepare, "needs the model to load")
        self._stage("tokenizer", self._measure_tokenizer)
        self._require("load", self._load_model, "needs the model to load")
        self._stage("forward", self._measure_forward)
        self._require("adapter", self._build_adapter, "needs the adapter to build")
        self._require("training", self._prepare_data, "needs training data")
        if main:
            self._stage("before", lambda: setattr(self.evidence, "before", self._measure_state("before")))
        self._require("training", self._train, "needs training to complete")
        if main:
            self.evidence.memory = memory_evidence(self._run.device, self.preflight)
            self._stage("saved", self._measure_saved)
            self._stage("reload", self._measure_reload)
            self._stage("after", lambda: setattr(self.evidence, "after", self._measure_state("after")))
            if self.config.validation.oracle:
                self._stage("oracle", self._measure_oracle)
            if self.config.validation.compare_engines:
                self._stage("engines", self._measure_engines)
        else:
            for name in ("before", "saved", "reload", "after"):
                self.evidence.absent[name] = "measured on rank 0"
        distributed.barrier(self.world)

    @property
    def _run(self) -> Run:
        assert self.run is not None
        return self.run

    # -- stages before training

    def _prepare(self) -> None:
        self.run = prepare_run(self.config, with_data=False)

    def _measure_tokenizer(self) -> None:
        tokenizer = self._run.tokenizer
        ids = tokenizer(TOKENIZER_SAMPLE, add_special_tokens=False)["input_ids"]
        self.evidence.tokenizer = TokenizerEvidence(TOKENIZER_SAMPLE, len(ids), tokenizer.decode(ids))

    def _load_model(self) -> None:
        run = self._run
        reset_peak(run.device)
        began = time.perf_counter()
        self.base_model, report = run.load_base_with_report()
        resolved = run.resolved
        self.evidence.load = LoadEvidence(
            requested=self.config.base_model,
            served_as=resolved.served_as,
            source=resolved.source,
            path=str(resolved.path),
            random_init=resolved.random_init,
            seconds=time.perf_counter() - began,
            missing_keys=report.missing_keys,
            unexpected_keys=report.unexpected_keys,
            mismatched_keys=report.mismatched_keys,
        )
        self.progress(f"loaded {resolved.served_as} from {resolved.source}")

    def _measure_forward(self) -> None:
        run = self._run
        encoded = run.tokenizer(TOKENIZER_SAMPLE, return_tensors="pt").to(run.device)
        with torch.no_grad():
            logits = self.base_model(**encoded).logits
        self.evidence.forward = ForwardEvidence(
            tuple(logits.shape),
            (1, encoded["input_ids"].shape[1], run.info.vocab_size),
            bool(torch.isfinite(logits).all()),
        )

    def _build_adapter(self) -> None:
        from harness.adapters import build_adapter

        run = self._run
        torch.manual_seed(self.config.seed)
        run.model, run.adapter = build_adapter(self.base_model, self.config, run.info, run.resolved.served_as)
        self.base_model = None  # the adapter wraps it now
        self.evidence.adapter = AdapterEvidence(
            kind=self.config.adapter,
            r=self.config.lora.r,
            target_modules=list(run.adapter.target_modules),
            num_hidden_layers=run.info.num_layers,
            layers=lora_layers(run.model, run.info),
            describe=run.adapter.describe(),
        )
        self.evidence.facts["adapter"] = dataclasses.asdict(run.adapter) | {"describe": run.adapter.describe()}

    def _prepare_data(self) -> None:
        run = self._run
        config, data, note = fit_epochs_to_step_cap(self.config, run.data, self.world.size)
        self.config = run.config = config
        run.prepared = data
        if note:
            self.evidence.facts["step_cap"] = note
        self.evidence.data_kind = (
            "tasks"
            if config.dataset.path == BUILTIN_TASKS
            else "conversation"
            if any(r.messages for r in data.held_out)
            else "free_text"
        )
        self.evidence.facts["data"] = data.stats.to_dict() | {
            "source": data.source,
            "train_examples": len(data.train),
            "validation_examples": len(data.validation),
            "held_out_records": len(data.held_out),
        }

    # -- measurements before and after

    def _measure_state(self, when: str) -> ModelState:
        run, validation = self._run, self.config.validation
        examples = run.data.validation[: validation.eval_loss_examples]
        if not examples:
            raise ConfigError("dataset.train_split: no held-out examples to measure the loss on; use a split < 1")
        self.progress(f"held-out loss on {len(examples)} examples {when} training")
        loss = held_out_loss(run.model, examples, pad_token_id(run.tokenizer), run.device)
        if not validation.generation:
            self.evidence.absent["answers"] = "disabled (validation.generation: false)"
            return ModelState(loss, None, None)
        if run.resolved.random_init:
            self.evidence.absent["answers"] = "random init"
            return ModelState(loss, None, None)
        return ModelState(loss, self._answers(when), self._reference_perplexity())

    def _answers(self, when: str) -> list[Answer]:
        run = self._run
        records = run.data.held_out[: self.config.validation.eval_examples]
        self.progress(f"generating {len(records)} held-out answers {when} training")
        generated = generate_ids(
            run.model,
            run.tokenizer,
            [prompt_ids(r, run.tokenizer) for r in records],
            max_new_tokens=self.config.validation.max_new_tokens,
            batch_size=20,
        )
        checkable = self.evidence.data_kind == "tasks"
        return [
            Answer(
                prompt=r.input or r.instruction or (r.messages[0]["content"] if r.messages else ""),
                expected=reference_answer(r),
                generated=g.text,
                ended=g.ended,
                correct=is_correct(r, g.text) if checkable else None,
                family=r.family,
            )
            for r, g in zip(records, generated)
        ]

    def _reference_perplexity(self) -> float:
        run = self._run
        ids = run.tokenizer(REFERENCE_TEXT, add_special_tokens=True)["input_ids"]
        loss = held_out_loss(run.model, [Example(ids, list(ids))], pad_token_id(run.tokenizer), run.device)
        return math.exp(loss.mean)

    # -- training

    def _train(self) -> None:
        run = self._run
        self.evidence.engine = self.config.training.engine
        trainer: Any = run.trainer(output_dir=str(self.out_dir / "training"))
        if self.evidence.engine == "trl":
            from harness.engines.trl import TrlTrainer

            trainer = TrlTrainer(run, self.out_dir / "trl")
        self.progress(
            f"training {trainer.total_steps} steps ({trainer.epochs_planned} epoch(s) of "
            f"{trainer.steps_per_epoch}) on {run.device}"
        )
        self.evidence.facts["plan"] = {
            "total_steps": trainer.total_steps,
            "warmup_steps": trainer.warmup_steps,
            "steps_per_epoch": trainer.steps_per_epoch,
            "epochs": trainer.epochs_planned,
        }
        began = time.perf_counter()
        try:
            self.result = result = trainer.train()
        finally:
            self.evidence.facts["training_seconds"] = time.perf_counter() - began
        if self.evidence.engine == "trl":
            self._adopt_trl_model(trainer.model)
        history = result.history
        tokens = sum(r.tokens for r in history)
        self.evidence.facts["throughput"] = {
            "tokens": tokens,
            "target_tokens": sum(r.target_tokens for r in history),
            "tokens_per_s": tokens / max(1e-9, sum(r.seconds for r in history)),
        }
        self.evidence.facts["evals"] = result.evals
        self.evidence.facts["reference_losses"] = reference_verdict(self.config, [r.loss for r in history])
        training = self.config.training
        self.evidence.training = TrainingEvidence(
            steps=[
                StepEvidence(
                    r.step, r.epoch, r.loss, r.lr, r.grad_norm, r.clipped_norm, r.tokens, r.target_tokens, r.seconds
                )
                for r in history
            ],
            total_steps=result.total_steps,
            warmup_steps=result.warmup_steps,
            steps_per_epoch=result.steps_per_epoch,
            epochs_planned=result.epochs_planned,
            epochs_completed=result.epochs_completed,
            lr_scheduler=training.lr_scheduler,
            learning_rate=training.learning_rate,
            max_grad_norm=training.max_grad_norm,
            vocab_size=run.info.vocab_size,
            epoch_target_tokens=sum(shifted_targets(e) for e in run.data.train),
            seconds=self.evidence.facts["training_seconds"],
            trainable_dtype=_trainable_dtype(run.model),
        )
        self.progress(f"trained {len(history)} steps: loss {history[0].loss:.4f} -> {history[-1].loss:.4f}")

    def _adopt_trl_model(self, model: Any) -> None:
        """From here on the model measured, saved and reloaded is the one TRL built and trained; the
        adapter evidence describes its LoRA layers."""
        run = self._run
        run.model = model
        if self.evidence.adapter is not None:
            self.evidence.adapter.layers = lora_layers(model, run.info)

    def _measure_engines(self) -> None:
        """The same run through the other engine, from the same seeded adapter init, on the same data in
        the same order: its per-step losses beside this run's."""
        from harness.adapters import build_adapter
        from harness.engines.trl import TrlTrainer
        from harness.training import Trainer

        assert self.result is not None
        run = self._run
        ours = [r.loss for r in self.result.history]
        began = time.perf_counter()
        if self.evidence.engine == "trl":
            self.progress("training the same run through the harness loop (validation.compare_engines)")
            torch.manual_seed(self.config.seed)
            model, _summary = build_adapter(run.load_base(), self.config, run.info, run.resolved.served_as)
            other = Trainer(
                model,
                self.config,
                run.data.train,
                run.data.validation,
                pad_id=pad_token_id(run.tokenizer),
                device=run.device,
                output_dir=self.out_dir / "engines-harness",
            ).train()
            harness, trl = [r.loss for r in other.history], ours
        else:
            self.progress("training the same run through TRL's SFTTrainer (validation.compare_engines)")
            other = TrlTrainer(run, self.out_dir / "engines-trl").train()
            harness, trl = ours, [r.loss for r in other.history]
        self.evidence.engines = EnginesEvidence(harness, trl, self.config.training.packing, time.perf_counter() - began)

    def _measure_oracle(self) -> None:
        """The same run through transformers' Trainer (``harness.oracle``): its per-step losses and
        how far its final adapter weights are from the harness's."""
        from harness.oracle import run_oracle, trainable_weights, weight_difference

        if self.world.distributed:
            self.evidence.absent["oracle"] = f"compares single-process runs; this one has {self.world.size} ranks"
            return
        if self.evidence.engine != "harness":
            self.evidence.absent["oracle"] = (
                "the oracle checks the harness loop against transformers' Trainer; this run trained with "
                f"training.engine: {self.evidence.engine} (validation.compare_engines compares the engines)"
            )
            return
        assert self.result is not None
        self.progress("training the same run through transformers' Trainer (validation.oracle)")
        oracle = run_oracle(self._run)
        difference, scale = weight_difference(trainable_weights(self._run.model), oracle.weights)
        losses = [r.loss for r in self.result.history]
        self.evidence.oracle = OracleEvidence(losses, oracle.losses, difference, scale, oracle.seconds)

    # -- checkpoint save and reload

    def _final_checkpoint(self) -> Path:
        assert self.result is not None and self.result.checkpoints
        return self.result.checkpoints[-1]

    def _measure_saved(self) -> None:
        from safetensors import safe_open

        final = self._final_checkpoint()
        weights = final / (ADAPTER_WEIGHTS if self.config.adapter != "none" else "model.safetensors")
        try:
            with safe_open(str(weights), framework="pt") as handle:
                names, readable = list(handle.keys()), True
        except Exception:  # noqa: BLE001 - an unreadable file is the measurement
            names, readable = [], False
        self.evidence.saved = SavedEvidence(
            str(final), weights.name, readable, names, weights.stat().st_size if weights.exists() else 0
        )
        if self.after_training:
            self.after_training(final)

    def _measure_reload(self) -> None:
        run = self._run
        final = self._final_checkpoint()
        sample = run.data.validation[:4] or run.data.train[:4]
        batch = pad_batch(sample, pad_id=pad_token_id(run.tokenizer)).to(run.device)
        inputs = {k: v for k, v in batch.inputs.items() if k != "labels"}
        run.model.eval()
        effect = None
        with torch.no_grad():
            trained = run.model(**inputs).logits.float()
            if self.config.adapter == "none":
                from harness.loading import load_model

                reloaded = load_model(final, device=run.device, dtype=run.dtype)
            elif self.evidence.engine == "trl":
                from peft import PeftModel

                reloaded = PeftModel.from_pretrained(run.load_base(), str(final))  # TRL writes no harness manifest
                _as_saved(reloaded, final)
            else:
                reloaded = load_adapter(run.load_base(), final, expected_base=run.resolved.served_as)
            again = reloaded.eval()(**inputs).logits.float()
            if self.config.adapter != "none":
                with reloaded.disable_adapter():
                    effect = float((reloaded(**inputs).logits.float() - again).abs().max())
        run.model.train()
        written, expected, parse_error = None, None, None
        if self.config.adapter != "none":
            written = json.loads((final / ADAPTER_CONFIG).read_text())
            expected = self._expected_adapter_config()
            parse_error = _peft_parse_error(final)
        self.evidence.reload = ReloadEvidence(
            float((trained - again).abs().max()), effect, written, expected, parse_error
        )

    def _expected_adapter_config(self) -> dict[str, Any]:
        run, lora = self._run, self.config.lora
        assert run.adapter is not None
        return {
            "base_model_name_or_path": run.resolved.served_as,
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "r": lora.r,
            "lora_alpha": lora.alpha,
            "target_modules": list(run.adapter.target_modules),
        }


def memory_evidence(
    device: torch.device,
    preflight: dict[str, Any] | None,
    *,
    peak_gib: Callable[[torch.device], float | None] = cuda_peak_gib,
    section5: Callable[[], list[dict[str, Any]]] = predict_rows,
) -> MemoryEvidence | None:
    """On CUDA, the peak so far (read right after training) beside the pre-flight's prediction, and the
    section 5 rows; None on any other device, where there is no GPU memory to report."""
    if device.type != "cuda":
        return None
    preflight = preflight or {}
    return MemoryEvidence(
        device=torch.cuda.get_device_name(device),
        predicted_peak_gib=preflight.get("predicted_peak_gib"),
        free_gib=preflight.get("free_gib"),
        measured_peak_gib=peak_gib(device),
        section5=section5(),
    )


def _peft_parse_error(directory: Path) -> str | None:
    from peft import LoraConfig

    try:
        LoraConfig.from_pretrained(str(directory))
    except Exception as exc:  # noqa: BLE001 - the error is the measurement
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None


def lora_layers(model: Any, info: Any) -> list[LoraLayer]:
    """Every LoRA-adapted module: its A/B shapes, the in/out features of the linear layer it wraps,
    and ModelInfo's prediction for that layer."""
    layers = []
    for name, module in model.named_modules():
        lora_a = getattr(module, "lora_A", None)
        if lora_a is None or "default" not in lora_a:
            continue
        base = module.get_base_layer()
        predicted_in, predicted_out = target_dims(name.rsplit(".", 1)[-1], info)
        layers.append(
            LoraLayer(
                name=name,
                a_shape=tuple(lora_a["default"].weight.shape),
                b_shape=tuple(module.lora_B["default"].weight.shape),
                base_in=int(base.in_features),
                base_out=int(base.out_features),
                predicted_in=predicted_in,
                predicted_out=predicted_out,
            )
        )
    return layers


def _trainable_dtype(model: Any) -> str:
    """The widest-rounding dtype among the trained parameters, as a name ("bfloat16")."""
    dtypes = {p.dtype for p in model.parameters() if p.requires_grad}
    return str(max(dtypes, key=lambda d: torch.finfo(d).eps) if dtypes else torch.float32).removeprefix("torch.")


def _as_saved(model: Any, directory: Path) -> None:
    """Give the reloaded LoRA weights the dtype they were saved in. PEFT upcasts bfloat16 adapters to
    float32 on load (and cannot be told not to for a quantized base, peft#2889), while TRL trains QLoRA
    adapters in bfloat16 and saves them so; the trained logits come from bfloat16 adapters."""
    from safetensors import safe_open

    with safe_open(str(directory / ADAPTER_WEIGHTS), framework="pt") as saved:
        dtypes = {saved.get_slice(name).get_dtype() for name in saved.keys()}  # noqa: SIM118 (safe_open is not iterable)
    if dtypes == {"BF16"}:
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.data = parameter.data.to(torch.bfloat16)
