"""Peak GPU memory of a training run, predicted on a CPU by fake-executing two training steps.

The configured model is built from its ``config.json`` alone under PyTorch's ``FakeTensorMode``
(shapes and dtypes, no data, no memory), wrapped by the harness's own adapter code, and trained for
two steps by the harness's own ``training_step`` (imported, never copied, so a change of the loss
path changes the prediction). A dispatch mode counts the bytes of every live tensor storage; the
peak is the prediction. Kernel choices that differ between CPU and CUDA take CUDA's
(``cuda_rules``). Every row is all targets: the worst case for the LM-head loss.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from harness.config import RunConfig
from harness.errors import ConfigError
from harness.memory import cuda_rules
from harness.model_info import ModelInfo

GIB = 2**30
SUPPORTED_MODEL_TYPES = ("llama",)  # what the 4-bit faking and the CUDA rules were checked on
_INDEX_OPS = {"aten::index", "aten::index_put", "aten::index_put_", "aten::_index_put_impl_"}


@dataclass
class Breakdown:
    base_weights: float
    quantization_statistics: float
    adapter_weights: float
    gradients_and_optimizer: float
    activations: float  # everything else at the peak: activations, saved tensors, temporaries


@dataclass
class Prediction:
    peak_gib: float
    breakdown: Breakdown
    peak_op: str
    peak_phase: str
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class LiveStorage(TorchDispatchMode):
    """Counts the bytes of live tensor storages and remembers the peak and the op that reached it."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self.peak_op = ""
        self.peak_phase = ""
        self.phase = "build"
        self.regions: dict[str, tuple[int, str]] = {}  # region -> (peak bytes, op at it)
        self._seen: Any = weakref.WeakKeyDictionary()

    def track(self, tensor: torch.Tensor, op: str) -> None:
        storage = tensor.untyped_storage()
        if storage in self._seen:
            return
        size = storage.nbytes()
        self._seen[storage] = size
        weakref.finalize(storage, self._free, size)
        self.live += size
        region = f"{self.phase}, {_part()}"
        if self.live > self.regions.get(region, (-1, ""))[0]:
            self.regions[region] = (self.live, op)
        if self.live > self.peak:
            self.peak, self.peak_op, self.peak_phase = self.live, op, region

    def _free(self, size: int) -> None:
        self.live -= size

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        name = func._schema.name
        if name == "aten::_local_scalar_dense":
            # A host sync: fake tensors have no value. Numbers read 1 (a finite loss); booleans read
            # True, the answer for full unpadded rows to transformers' "one sequence, no padding?"
            # (so no B x L x L mask is built, as on a GPU).
            return True if args[0].dtype == torch.bool else 1
        if name in _INDEX_OPS:
            args = (args[0], [p for i in args[1] for p in _all_true_positions(i)], *args[2:])
        out = func(*args, **kwargs)
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self.track(leaf, name)
        return out


def _part() -> str:
    """Which part of a step allocates: the parts have different per-layer slopes, so each gets its own
    peak (see ``predict``'s layer extrapolation)."""
    if torch._C._current_autograd_node() is not None:
        return "backward"
    return "forward" if torch.is_grad_enabled() else "no-grad (optimizer, clipping, eval)"


def _all_true_positions(index: torch.Tensor | None) -> list[Any]:
    """A boolean mask as the integer positions it selects (one index per mask dimension), assuming
    every element is selected (the predictor's rows are all targets): fake tensors cannot know how
    many elements a mask keeps."""
    if index is None or index.dtype != torch.bool:
        return [index]
    return [torch.empty((index.numel(),), dtype=torch.long, device=index.device) for _ in range(index.ndim)]


@contextmanager
def fake_execution(counter: LiveStorage) -> Iterator[Any]:
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode(allow_non_fake_inputs=False)
    swap = torch.utils.swap_tensors
    # Module.to() swaps fake parameters, which swap_tensors refuses (the fake mode holds weakrefs to
    # them); replacing .data is what it would achieve.
    torch.utils.swap_tensors = _swap_by_data
    try:
        with mode, counter, cuda_rules.cuda_choices():
            yield mode
    finally:
        torch.utils.swap_tensors = swap


def _swap_by_data(first: torch.Tensor, second: torch.Tensor) -> None:
    first.data = second.data


def _materialize(model: torch.nn.Module, dtype: torch.dtype, quantization: Any) -> None:
    """Replace every meta parameter and buffer by a fake CPU tensor; 4-bit weights become their
    packed uint8 storage plus a quant_state of the sizes bitsandbytes keeps."""
    import bitsandbytes as bnb

    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is None:
                continue
            if isinstance(param, bnb.nn.Params4bit):
                _fake_params4bit(module, quantization)
            else:
                fake = torch.empty(param.shape, dtype=param.dtype, device="cpu")
                module._parameters[name] = torch.nn.Parameter(fake, requires_grad=param.requires_grad)
        for name, buffer in list(module._buffers.items()):
            if buffer is not None:
                module._buffers[name] = torch.empty(buffer.shape, dtype=buffer.dtype, device="cpu")


def _fake_params4bit(module: Any, quantization: Any) -> None:
    from bitsandbytes.functional import QuantState

    out_features, in_features = module.out_features, module.in_features
    numel = out_features * in_features
    blocks = -(-numel // quantization.block_size)
    state2 = None
    if quantization.double_quant:
        state2 = QuantState(
            absmax=torch.empty((-(-blocks // 256),), dtype=torch.float32),
            code=torch.empty((256,), dtype=torch.float32),
            blocksize=256,
            dtype=torch.float32,
        )
        absmax = torch.empty((blocks,), dtype=torch.uint8)
        offset: Any = torch.empty((), dtype=torch.float32)
    else:
        absmax, offset = torch.empty((blocks,), dtype=torch.float32), None
    # A plain parameter carrying bitsandbytes' attributes: Params4bit itself cannot wrap a fake tensor.
    packed: Any = torch.nn.Parameter(torch.empty(((numel + 1) // 2, 1), dtype=torch.uint8), requires_grad=False)
    packed.quant_type = quantization.quant_type
    packed.compress_statistics = quantization.double_quant
    packed.blocksize = quantization.block_size
    packed.bnb_quantized = True
    packed.quant_state = QuantState(
        absmax=absmax,
        shape=torch.Size((out_features, in_features)),
        code=torch.empty((16,), dtype=torch.float32),
        blocksize=quantization.block_size,
        quant_type=quantization.quant_type,
        dtype=module.compute_dtype,
        offset=offset,
        state2=state2,
    )
    module._parameters["weight"] = packed


def build_meta_model(model_config: dict[str, Any], config: RunConfig, dtype: torch.dtype) -> Any:
    """The configured base model on the meta device (no storage), 4-bit layers in place for QLoRA;
    built outside fake mode because bitsandbytes' Params4bit cannot wrap a fake tensor."""
    from transformers import AutoConfig, AutoModelForCausalLM

    hf_config = AutoConfig.for_model(**{k: v for k, v in model_config.items() if k != "architectures"})
    hf_config.use_cache = False
    with torch.device("meta"):
        model: Any = AutoModelForCausalLM.from_config(hf_config, dtype=dtype, attn_implementation="sdpa")
    if config.adapter == "qlora":
        from transformers.integrations.bitsandbytes import replace_with_bnb_linear

        from harness.loading import bitsandbytes_config

        if config.quantization.bits != 4:
            raise ConfigError(f"{config.source}: quantization.bits: the predictor fakes 4-bit weights only, got 8")
        compute = (
            dtype if config.quantization.compute_dtype == "auto" else getattr(torch, config.quantization.compute_dtype)
        )
        with torch.device("meta"):
            model = replace_with_bnb_linear(
                model,
                modules_to_not_convert=["lm_head"],
                quantization_config=bitsandbytes_config(config.quantization, compute),
            )
        model.is_loaded_in_4bit = True
    model.train()
    return model


@dataclass
class _Run:
    """One fake execution: the peak of every region and the static bytes (weights, quantization
    statistics, adapter, gradients + optimizer state)."""

    regions: dict[str, tuple[int, str]]
    statics: tuple[float, ...]


EXTRAPOLATE_FROM = (1, 2, 3)  # decoder layers actually executed when the model has more
ONE_OFF_BYTES = 4096


def predict(
    model_config: dict[str, Any],
    config: RunConfig,
    *,
    program: Any = None,
    steps: int = 2,
) -> Prediction:
    """Predicted peak of ``steps`` training steps of ``config`` on CUDA, as the harness trains, or as
    ``program`` does (a module with ``adapt(model, config)`` and ``step(model, optimizer, batch size,
    length)``: the reference program)."""
    checked_info(model_config, config)
    dtype = cuda_dtype(config)
    # The rule config gives for CUDA, made explicit: build_adapter would otherwise read the fake
    # model's CPU device and apply the CPU default.
    on_cuda = dataclasses.replace(
        config,
        training=dataclasses.replace(config.training, gradient_checkpointing=config.gradient_checkpointing("cuda")),
    )

    def run(layers_config: dict[str, Any]) -> _Run:
        return _train_steps(layers_config, on_cuda, dtype, program, steps)

    return _extrapolated(model_config, run)


def _train_steps(model_config: dict[str, Any], config: RunConfig, dtype: torch.dtype, program: Any, steps: int) -> _Run:
    from harness.adapters import build_adapter

    info = checked_info(model_config, config)
    counter = LiveStorage()
    batch_size, length = config.training.batch_size, config.dataset.max_length
    model = build_meta_model(model_config, config, dtype)
    with fake_execution(counter):
        _materialize(model, dtype, config.quantization)
        if program is None:
            model, _summary = build_adapter(model, config, info)
            run = HarnessStep(config)
        else:
            model, run = program.adapt(model, config), program.step
        optimizer = None
        for index in range(steps):
            counter.phase = f"step {index + 1}"
            optimizer = run(model, optimizer, batch_size, length)
        statics = _static_bytes(model, optimizer)
    return _Run(counter.regions, statics)


def _extrapolated(model_config: dict[str, Any], run: Callable[[dict[str, Any]], _Run]) -> Prediction:
    """The prediction for the model's depth from fake runs of 1, 2 and 3 decoder layers.

    Decoder layers are identical, so every region's peak (a part of a step: forward, backward,
    no-grad) and every static size is affine in the depth: forward peaks sit in the last layer or the
    head after all layers saved their activations, a backward peak in its first or last layer by the
    sign of (activation - gradient) per layer, which the depth does not change. Three depths check it
    (to 4 KiB); where any region is not exactly affine the full depth runs instead (slower, never a
    guess). Regions are extrapolated separately because their slopes differ (full fine-tuning: the
    optimizer's per-layer state against the activations), so the overall peak can move between them.
    """
    import time

    began = time.perf_counter()
    depth = int(model_config["num_hidden_layers"])
    if depth <= EXTRAPOLATE_FROM[-1]:
        return _prediction(run(model_config), began, [])
    runs = [run({**model_config, "num_hidden_layers": n}) for n in EXTRAPOLATE_FROM]
    extrapolated = _affine(runs, depth)
    if extrapolated is None:
        return _prediction(run(model_config), began, ["full depth: the per-layer sizes were not affine"])
    return _prediction(extrapolated, began, [f"extrapolated exactly from {EXTRAPOLATE_FROM} of {depth} layers"])


def _affine(runs: list[_Run], depth: int) -> _Run | None:
    """``runs`` at 1, 2, 3 layers carried to ``depth``, or None where a value is not affine in the depth."""
    one, two, three = runs
    if not one.regions.keys() == two.regions.keys() == three.regions.keys():
        return None

    def carry(a: float, b: float, c: float) -> float | None:
        # From 2 and 3 layers: the process's first fake run also counts a few one-off bytes (a cached
        # 16-byte scalar), hence the tolerance, far below what rounding to 0.01 GiB would show.
        return c + (depth - 3) * (c - b) if abs((c - b) - (b - a)) <= ONE_OFF_BYTES else None

    regions = {}
    for name in one.regions:
        peak = carry(one.regions[name][0], two.regions[name][0], three.regions[name][0])
        if peak is None:
            return None
        regions[name] = (int(peak), three.regions[name][1])
    statics = [carry(*values) for values in zip(one.statics, two.statics, three.statics, strict=True)]
    if any(value is None for value in statics):
        return None
    return _Run(regions, tuple(float(value or 0) for value in statics))


def _prediction(run: _Run, began: float, notes: list[str]) -> Prediction:
    import time

    phase, (peak, op) = max(run.regions.items(), key=lambda item: item[1][0])
    weights, quant, adapter, optimizer_bytes = (b / GIB for b in run.statics)
    breakdown = Breakdown(weights, quant, adapter, optimizer_bytes, (peak - sum(run.statics)) / GIB)
    return Prediction(peak / GIB, breakdown, op, phase, time.perf_counter() - began, notes)


def cuda_dtype(config: RunConfig) -> torch.dtype:
    """The run's dtype on a CUDA device: ``auto`` is bf16 (every GPU the document targets since Ampere)."""
    return torch.bfloat16 if config.training.dtype == "auto" else getattr(torch, config.training.dtype)


def checked_info(model_config: dict[str, Any], config: RunConfig) -> ModelInfo:
    """The model's shape, or a one-line refusal for what the predictor cannot fake faithfully."""
    model_type = model_config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ConfigError(
            f"{config.base_model}: model_type {model_type!r} is not supported by the memory predictor "
            f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)}); it refuses rather than guess"
        )
    return ModelInfo.from_dict(model_config, f"{config.base_model} config.json")


def predict_inference(model_config: dict[str, Any], config: RunConfig) -> Prediction:
    """Predicted peak of one no-grad forward with the harness's eval loss (inference rows)."""
    checked_info(model_config, config)
    dtype = cuda_dtype(config)

    def run(layers_config: dict[str, Any]) -> _Run:
        from harness.training import evaluate_loss

        counter = LiveStorage()
        model = build_meta_model(layers_config, config, dtype)
        with fake_execution(counter):
            _materialize(model, dtype, config.quantization)
            counter.phase = "inference"
            vocab = model.get_output_embeddings().weight.shape[0]
            evaluate_loss(model, [random_batch(config.training.batch_size, config.dataset.max_length, vocab)], "cpu")
            weights = sum(p.untyped_storage().nbytes() for p in model.parameters())
        return _Run(counter.regions, (weights, 0, 0, 0))

    return _extrapolated(model_config, run)


def _static_bytes(model: Any, optimizer: Any) -> tuple[float, float, float, float]:

    weights = quant = adapter = grads = 0
    for param in model.parameters():
        size = param.untyped_storage().nbytes()
        if hasattr(param, "quant_state"):
            weights += size
            quant += _quant_state_bytes(param.quant_state)
        elif param.requires_grad:
            adapter += size
            grads += size  # gradients have the weights' dtype and size
        else:
            weights += size
    state = sum(
        t.untyped_storage().nbytes()
        for s in (optimizer.state.values() if optimizer is not None else [])
        for t in s.values()
        if isinstance(t, torch.Tensor)
    )
    return weights, quant, adapter, grads + state


def _quant_state_bytes(state: Any) -> int:
    tensors = [state.absmax, state.code, state.offset]
    if state.state2 is not None:
        tensors += [state.state2.absmax, state.state2.code]
    return sum(t.untyped_storage().nbytes() for t in tensors if isinstance(t, torch.Tensor))


def random_batch(batch_size: int, length: int, vocab_size: int) -> Any:
    """Full rows of token ids, every position a target: no padding, so no attention mask (what
    transformers does with an all-ones mask on a GPU; under fake tensors it cannot see the ones)."""
    from harness.data.batching import Batch

    ids = torch.zeros((batch_size, length), dtype=torch.long)
    return Batch({"input_ids": ids, "labels": ids.clone()}, batch_size * length, batch_size * (length - 1))


class HarnessStep:
    """One optimizer step exactly as the harness's Trainer takes it on CUDA, on full random rows.

    Under fake execution the tensors stay on ``cpu`` and the optimizer is built as for CUDA; on a real
    device everything runs there. ``losses`` keeps each step's loss (a real run shows it trained)."""

    def __init__(self, config: RunConfig, device: str = "cpu") -> None:
        self.config, self.device = config, device
        self.losses: list[float] = []

    def __call__(self, model: Any, optimizer: Any, batch_size: int, length: int) -> Any:
        from harness.training import build_optimizer, training_step

        training = self.config.training
        if optimizer is None:
            kind = "cuda" if self.device == "cpu" else self.device
            optimizer = build_optimizer(model, training.learning_rate, training.weight_decay, torch.device(kind))
        vocab = model.get_output_embeddings().weight.shape[0]
        micro = [random_batch(batch_size, length, vocab) for _ in range(training.gradient_accumulation_steps)]
        result = training_step(model, micro, optimizer, max_grad_norm=training.max_grad_norm, device=self.device)
        self.losses.append(result.loss)
        return optimizer
