"""Run configuration: the research document's nested YAML schema, typed, with defaults.

Validation is table-driven: every field of every section dataclass carries a ``rule`` that says
what is allowed, and one walker applies it. An error is a single line naming the file, the dotted
key and what is allowed, e.g. ``configs/x.yaml: lora.r: must be an integer > 0, got 0``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.axolotl import from_axolotl, is_axolotl
from harness.errors import ConfigError

BUILTIN_TASKS = "builtin:tasks"


@dataclass(frozen=True)
class Rule:
    """What a field accepts: a kind (int, float, bool, str, str_list), a predicate and its wording."""

    kind: str
    allowed: str = ""
    check: Callable[[Any], bool] = lambda _value: True
    optional: bool = False


def _field(default: Any, rule: Rule) -> Any:
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"rule": rule})
    return field(default=default, metadata={"rule": rule})


def _choice(*options: str) -> Rule:
    return Rule("str", "one of " + ", ".join(options), lambda v: v in options)


_POSITIVE_INT = Rule("int", "an integer > 0", lambda v: v > 0)
_NON_NEGATIVE = Rule("float", "a number >= 0", lambda v: v >= 0)
_FRACTION = Rule("float", "a number in [0, 1]", lambda v: 0 <= v <= 1)
_DTYPES = ("auto", "float32", "bfloat16", "float16")


ATTENTION_IMPLEMENTATIONS = (
    "sdpa",
    "eager",
    "flex_attention",
    "flash_attention_2",
    "flash_attention_3",
    "torch_varlen",
)


@dataclass
class ModelSection:
    """How the base model runs (harness.attention says which kernel keeps packed rows fused)."""

    attn_implementation: str = _field("sdpa", _choice(*ATTENTION_IMPLEMENTATIONS))


@dataclass
class LoraSection:
    r: int = _field(8, _POSITIVE_INT)
    alpha: float = _field(16.0, Rule("float", "a number > 0", lambda v: v > 0))
    dropout: float = _field(0.0, Rule("float", "a number in [0, 1)", lambda v: 0 <= v < 1))
    target_modules: list[str] = _field(
        ["q_proj", "v_proj"], Rule("str_list", "a non-empty list of module names, or [all-linear]", bool)
    )


@dataclass
class QuantizationSection:
    bits: int = _field(4, Rule("int", "4 or 8", lambda v: v in (4, 8)))
    quant_type: str = _field("nf4", _choice("nf4", "fp4"))
    double_quant: bool = _field(True, Rule("bool"))
    block_size: int = _field(64, _POSITIVE_INT)
    compute_dtype: str = _field("auto", _choice(*_DTYPES))


@dataclass
class DatasetSection:
    path: str = _field(BUILTIN_TASKS, Rule("str", "a file, directory, hub id or builtin:tasks", bool))
    type: str = _field("alpaca", _choice("alpaca", "alpaca_cleaned", "dolly", "oasst", "sharegpt"))
    max_length: int = _field(256, _POSITIVE_INT)
    train_split: float = _field(0.9, Rule("float", "a number in (0, 1]", lambda v: 0 < v <= 1))
    train_on_inputs: bool = _field(False, Rule("bool"))
    skip_invalid: bool = _field(False, Rule("bool"))
    num_examples: int | None = _field(
        None, Rule("int", "an integer > 0 (rows to use; null = all)", lambda v: v > 0, optional=True)
    )
    task_families: list[str] = _field(
        ["sort_numbers", "reverse_words"], Rule("str_list", "a non-empty list of built-in task families", bool)
    )
    pad_token: str | None = _field(
        None, Rule("str", "a token of the tokenizer's vocabulary, or null (its own pad token, else EOS)", bool, True)
    )


@dataclass
class TrainingSection:
    epochs: int = _field(1, _POSITIVE_INT)
    batch_size: int = _field(4, _POSITIVE_INT)
    gradient_accumulation_steps: int = _field(1, _POSITIVE_INT)
    max_steps: int | None = _field(None, Rule("int", "an integer > 0 or null", lambda v: v > 0, optional=True))
    learning_rate: float = _field(2e-4, _NON_NEGATIVE)
    weight_decay: float = _field(0.0, _NON_NEGATIVE)
    lr_scheduler: str = _field("linear", _choice("linear", "cosine", "constant"))
    warmup_ratio: float = _field(0.1, _FRACTION)
    warmup_steps: int | None = _field(
        None, Rule("int", "an integer >= 0 or null (null: use warmup_ratio)", lambda v: v >= 0, optional=True)
    )
    max_grad_norm: float = _field(1.0, Rule("float", "a number > 0", lambda v: v > 0))
    logging_steps: int = _field(10, _POSITIVE_INT)
    save_steps: int = _field(100, _POSITIVE_INT)
    eval_steps: int | None = _field(None, Rule("int", "an integer > 0 or null", lambda v: v > 0, optional=True))
    saves_per_epoch: int | None = _field(
        None,
        Rule("int", "an integer > 0 or null (when set: save every ceil(steps per epoch / n))", lambda v: v > 0, True),
    )
    evals_per_epoch: int | None = _field(
        None,
        Rule("int", "an integer > 0 or null (when set: eval every ceil(steps per epoch / n))", lambda v: v > 0, True),
    )
    eval_batches: int = _field(4, _POSITIVE_INT)
    skip_nonfinite: int = _field(
        0, Rule("int", "an integer >= 0 (optimizer steps with NaN/Inf to skip)", lambda v: v >= 0)
    )
    packing: bool = _field(False, Rule("bool"))
    group_by_length: bool = _field(False, Rule("bool"))
    gradient_checkpointing: bool | None = _field(
        None,
        Rule(
            "bool",
            "true, false or null (auto: by free GPU memory in train/validate, else on for QLoRA on CUDA)",
            optional=True,
        ),
    )
    dtype: str = _field("auto", _choice(*_DTYPES))
    device: str = _field("auto", _choice("auto", "cpu", "cuda"))
    compile: bool = _field(False, Rule("bool"))
    # Which trainer ``harness validate`` judges: this project's loop or TRL's SFTTrainer (harness.engines.trl).
    engine: str = _field("harness", _choice("harness", "trl"))


@dataclass
class ValidationSection:
    """Thresholds of ``harness validate`` (the research document's section 9 criteria)."""

    min_steps: int = _field(100, _POSITIVE_INT)
    eval_loss_examples: int = _field(64, _POSITIVE_INT)
    loss_decrease_ratio: float = _field(0.95, Rule("float", "a number in (0, 1]", lambda v: 0 < v <= 1))
    loss_decrease_min_z: float = _field(3.0, _NON_NEGATIVE)
    first_loss_max_fraction: float = _field(0.6, Rule("float", "a number in (0, 1]", lambda v: 0 < v <= 1))
    random_init_first_loss_tolerance: float = _field(0.1, _FRACTION)
    grad_norm_min: float = _field(1e-6, _NON_NEGATIVE)
    grad_norm_max: float = _field(100.0, Rule("float", "a number > 0", lambda v: v > 0))
    eval_examples: int = _field(40, _POSITIVE_INT)
    max_new_tokens: int = _field(32, _POSITIVE_INT)
    min_accuracy_gain: float = _field(0.5, _FRACTION)
    min_coherent_fraction: float = _field(0.8, _FRACTION)
    min_response_loss_drop: float = _field(0.02, _FRACTION)
    max_perplexity_ratio: float = _field(1.5, Rule("float", "a number >= 1", lambda v: v >= 1))
    generation: bool = _field(True, Rule("bool"))
    oracle: bool = _field(False, Rule("bool"))  # also train through transformers' Trainer and compare
    oracle_tolerance: float = _field(1e-5, Rule("float", "a number > 0", lambda v: v > 0))
    compare_engines: bool = _field(False, Rule("bool"))  # also train through the other engine and compare
    engines_tolerance: float = _field(1e-3, Rule("float", "a number > 0", lambda v: v > 0))


@dataclass
class RunConfig:
    base_model: str = _field("HuggingFaceTB/SmolLM2-135M", Rule("str", "a hub id or a local path", bool))
    adapter: str = _field("lora", _choice("lora", "qlora", "none"))
    output_dir: str = _field("./outputs/run", Rule("str", "a directory path", bool))
    seed: int = _field(42, Rule("int", "an integer >= 0", lambda v: v >= 0))
    allow_pickle: bool = _field(False, Rule("bool"))
    model: ModelSection = field(default_factory=ModelSection)
    lora: LoraSection = field(default_factory=LoraSection)
    quantization: QuantizationSection = field(default_factory=QuantizationSection)
    dataset: DatasetSection = field(default_factory=DatasetSection)
    training: TrainingSection = field(default_factory=TrainingSection)
    validation: ValidationSection = field(default_factory=ValidationSection)
    source: str = field(default="<defaults>", compare=False)
    ignored_keys: list[str] = field(default_factory=list, compare=False)

    def gradient_checkpointing(self, device_type: str) -> bool:
        """Whether activations are recomputed in backward: as configured, else on for QLoRA on a GPU,
        where memory (the research document's VRAM table) is the point of QLoRA."""
        value = self.training.gradient_checkpointing
        return value if value is not None else (self.adapter == "qlora" and device_type == "cuda")

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain data (what check-config prints and reports embed)."""
        data = dataclasses.asdict(self)
        data.pop("source")
        data.pop("ignored_keys")
        return data

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


_SECTIONS: dict[str, type] = {
    "model": ModelSection,
    "lora": LoraSection,
    "quantization": QuantizationSection,
    "dataset": DatasetSection,
    "training": TrainingSection,
    "validation": ValidationSection,
}
_PATH_KEYS = ("output_dir", "dataset.path")


def _kind_name(kind: str) -> str:
    return {
        "int": "an integer",
        "float": "a number",
        "bool": "true or false",
        "str": "a string",
        "str_list": "a list of strings",
    }[kind]


def _coerce(value: Any, rule: Rule, where: str) -> Any:
    """Return ``value`` converted to the rule's kind, or raise a one-line error."""
    if value is None:
        if rule.optional:
            return None
        raise ConfigError(f"{where}: must be {rule.allowed or _kind_name(rule.kind)}, got null")
    kind = rule.kind
    ok = True
    if kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "float":
        # PyYAML reads `1e-4` (no dot) as a string; accept any numeric literal.
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                ok = False
        ok = ok and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        value = float(value) if ok else value
    elif kind == "bool":
        ok = isinstance(value, bool)
    elif kind == "str":
        ok = isinstance(value, str)
    elif kind == "str_list":
        if isinstance(value, str):
            value = [value]
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    if not ok:
        raise ConfigError(f"{where}: must be {_kind_name(kind)}, got {type(value).__name__} {value!r}")
    if not rule.check(value):
        raise ConfigError(f"{where}: must be {rule.allowed}, got {value!r}")
    return value


def _unknown_key(key: str, prefix: str, known: list[str], source: str) -> ConfigError:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.5) or [
        k for k in known if key.startswith(k) or k.startswith(key)
    ]
    hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
    return ConfigError(f"{source}: {prefix}{key}: unknown key{hint}; allowed: {', '.join(known)}")


def _build(cls: type, raw: Mapping[str, Any], prefix: str, source: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in ("source", "ignored_keys")}
    for key in raw:
        if key not in fields:
            raise _unknown_key(str(key), prefix, list(fields), source)
    values: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in raw:
            continue
        where = f"{source}: {prefix}{name}"
        if name in _SECTIONS and cls is RunConfig:
            section = raw[name]
            if section is None:
                continue
            if not isinstance(section, Mapping):
                raise ConfigError(f"{where}: must be a mapping of keys, got {type(section).__name__}")
            values[name] = _build(_SECTIONS[name], section, f"{name}.", source)
        else:
            values[name] = _coerce(raw[name], f.metadata["rule"], where)
    return cls(**values)


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any, source: str) -> None:
    parts = dotted.split(".")
    if len(parts) > 2 or not all(parts):
        raise ConfigError(f"{source}: {dotted}: keys are 'name' or 'section.name'")
    if len(parts) == 2:
        section, key = parts
        if section not in _SECTIONS:
            raise _unknown_key(section, "", list(_SECTIONS), source)
        target = raw.setdefault(section, {})
        if not isinstance(target, dict):
            raise ConfigError(f"{source}: {section}: must be a mapping of keys")
        target[key] = value
    else:
        raw[parts[0]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """Split a ``dotted.key=value`` override; the value is read as YAML (so 1e-3, true, [a, b] work)."""
    if "=" not in text:
        raise ConfigError(f"--set {text}: expected dotted.key=value")
    key, _, value = text.partition("=")
    try:
        parsed = yaml.safe_load(value) if value else ""
    except yaml.YAMLError:
        parsed = value
    return key.strip(), parsed


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}{line}: invalid YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of keys, got {type(data).__name__}")
    return data


def _resolve_relative_paths(raw: dict[str, Any], base: Path) -> None:
    """Relative paths in a file are relative to that file, so a config works from any directory."""
    if isinstance(raw.get("output_dir"), str) and not Path(raw["output_dir"]).is_absolute():
        raw["output_dir"] = str((base / raw["output_dir"]).resolve())
    dataset = raw.get("dataset")
    if isinstance(dataset, dict) and isinstance(dataset.get("path"), str):
        candidate = base / dataset["path"]
        looks_local = dataset["path"].startswith((".", "/")) or candidate.exists()
        if looks_local and not Path(dataset["path"]).is_absolute():
            dataset["path"] = str(candidate.resolve())


def config_from_dict(raw: Mapping[str, Any], source: str = "<dict>", overrides: list[str] | None = None) -> RunConfig:
    """Validate a raw mapping (plus ``--set`` overrides) into a ``RunConfig``."""
    data: dict[str, Any] = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in raw.items()}
    config: RunConfig = _build(RunConfig, data, "", source)
    for text in overrides or []:
        # Each override is checked on its own, so an error names the override rather than the file.
        key, value = parse_override(text)
        _set_dotted(data, key, value, f"--set {text}")
        config = _build(RunConfig, data, "", f"--set {text}")
    config.source = source
    return config


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Load a YAML run config (or the embedded default when ``path`` is None)."""
    if path is None:
        return config_from_dict(default_config_dict(), "<embedded default>", overrides)
    path = Path(path)
    raw = _read_yaml(path)
    ignored: list[str] = []
    if is_axolotl(raw):
        raw, ignored = from_axolotl(raw, str(path))
    _resolve_relative_paths(raw, path.resolve().parent)
    config = config_from_dict(raw, str(path), overrides)
    config.ignored_keys = ignored
    return config


def default_config_dict() -> dict[str, Any]:
    """The embedded default validation run: bundled SmolLM2, LoRA on every linear layer, the built-in
    task set, sized (measured) to finish in about three minutes on two CPU cores."""
    return {
        "base_model": "HuggingFaceTB/SmolLM2-135M",
        "adapter": "lora",
        "output_dir": "./outputs/validate-default",
        "seed": 42,
        "lora": {
            "r": 16,
            "alpha": 32,
            "dropout": 0.0,
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        },
        "dataset": {
            "path": BUILTIN_TASKS,
            "type": "alpaca",
            "max_length": 512,  # a cap: batches pad to their longest row (about 80 SmolLM2 tokens here)
            "train_split": 0.8,
            "num_examples": 190,
            "task_families": ["sort_numbers", "reverse_words"],
        },
        # 152 train examples / batch 3 = 51 steps an epoch; two epochs (so the epoch boundary is
        # checked) give the 100+ steps the criteria want. Batch 3 and short generations keep the run
        # near 170 s on two CPU cores; batch 2 learns too little (+45 points, measured). No periodic
        # eval: the held-out loss is measured before and after training instead.
        "training": {
            "epochs": 2,
            "batch_size": 3,
            "learning_rate": 1e-3,
            "lr_scheduler": "linear",
            "warmup_ratio": 0.05,
            "logging_steps": 10,
            "save_steps": 50,
            "dtype": "float32",
        },
        # Answers are at most 23 tokens with EOS (six two-digit numbers), so 24 new tokens suffice.
        "validation": {"min_steps": 100, "eval_examples": 40, "eval_loss_examples": 32, "max_new_tokens": 24},
    }
