"""The ``harness`` command line.

Every user-caused failure is a ``HarnessError`` whose one-line message is printed as ``error: ...``;
nothing else is caught, so real bugs still show their traceback. Exit codes:

  0    success (validate: every criterion passed)
  1    validate: a criterion failed (the report says which)
  2    bad input: config, dataset, checkpoint, model, output folder or command-line arguments
  3    train: training itself failed (NaN/Inf loss or gradient, out of memory, checkpoint not writable)
  130  interrupted by SIGINT (Ctrl-C) after checkpointing; the last line is the command to resume
  143  interrupted by SIGTERM, likewise

Under torchrun, a rank that fails makes every other rank exit at once with its code and message.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shlex
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from harness.errors import HarnessError, TrainingError

EXIT_CRITERION_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_TRAINING_FAILED = 3


def _cmd_fetch(args: argparse.Namespace) -> int:
    from harness.model_info import ModelInfo
    from harness.resolve import resolve_model

    start = time.perf_counter()
    resolved = resolve_model(args.model)
    elapsed = time.perf_counter() - start
    info = ModelInfo.from_config(resolved.path)
    print(f"{args.model}: {resolved.description}")
    print(f"  source: {resolved.source} ({elapsed:.2f} s)")
    print(
        f"  architecture: hidden {info.hidden_size}, layers {info.num_layers}, heads "
        f"{info.num_attention_heads}, kv heads {info.num_kv_heads}, intermediate {info.intermediate_size}, "
        f"vocab {info.vocab_size}, rope theta {info.rope_theta:g}"
    )
    if args.generate:
        from harness.generation import greedy_generate
        from harness.loading import load_model, load_tokenizer

        tokenizer = load_tokenizer(resolved.path)
        model = load_model(resolved.path)
        text = greedy_generate(model, tokenizer, [args.generate], max_new_tokens=16)[0]
        print(f"  generate: {args.generate!r} -> {text!r}")
    return 0


def _announce_ignored(config: Any) -> None:
    if config.ignored_keys:
        print(f"{config.source}: ignored axolotl keys: {', '.join(config.ignored_keys)}", file=sys.stderr)


def _cmd_check_config(args: argparse.Namespace) -> int:
    from harness.config import load_config

    config = load_config(args.config, args.set)
    _announce_ignored(config)
    print(f"# {config.source}: valid")
    print(config.to_yaml(), end="")
    return 0


def _load_run_config(args: argparse.Namespace) -> Any:
    from harness.config import load_config

    overrides = list(args.set)
    if getattr(args, "max_steps", None) is not None:
        overrides.append(f"training.max_steps={args.max_steps}")
    if getattr(args, "output_dir", None) is not None:
        overrides.append(f"output_dir={Path(args.output_dir).resolve()}")
    if getattr(args, "allow_pickle", False):
        overrides.append("allow_pickle=true")
    if getattr(args, "skip_nonfinite", None) is not None:
        overrides.append(f"training.skip_nonfinite={args.skip_nonfinite}")
    engine = getattr(args, "engine", None)
    if engine is not None:
        overrides.append(f"training.engine={'harness' if engine == 'both' else engine}")
        overrides += ["validation.compare_engines=true"] if engine == "both" else []
    return load_config(args.config, overrides)


def _cmd_probe(args: argparse.Namespace) -> int:
    import json

    import torch

    from harness.config import load_config
    from harness.memory.probe import check_gpu_gib, format_probe, probe

    check_gpu_gib(args.gpu_gib)
    measure = None
    if torch.cuda.is_available() and not args.no_measure:
        from harness.memory.measure import measure_steps

        measure = measure_steps
    result = probe(load_config(args.config, args.set), args.gpu_gib, measure)
    print(json.dumps(result, indent=2) if args.json else format_probe(result))
    return 0


def _preflight(config: Any) -> tuple[Any, dict[str, Any] | None]:
    """On CUDA, choose gradient checkpointing by the free memory when the config leaves it null, predict
    the peak before any weights load and refuse (exit 2) what cannot fit; returns the config to run and
    the prediction (None off CUDA)."""
    import torch

    from harness.loading import pick_device

    if pick_device(config.training.device).type != "cuda":
        return config, None
    from harness.memory.probe import choose_checkpointing, preflight

    free_gib = torch.cuda.mem_get_info()[0] / 2**30
    config = choose_checkpointing(config, free_gib)
    result = preflight(config, free_gib)
    checkpointing = "on" if config.training.gradient_checkpointing else "off"
    print(
        f"memory: PREDICTED peak {result['predicted_peak_gib']:.2f} GiB of {result['free_gib']:.2f} GiB free "
        f"(gradient checkpointing {checkpointing})"
    )
    return config, result


def _cmd_train(args: argparse.Namespace) -> int:
    """Fine-tune; under torchrun every rank runs this, and rank 0 alone prints and writes."""
    from harness import distributed
    from harness.checkpoint import export_adapter
    from harness.recipe import prepare_run
    from harness.training import TrainingInterrupted, find_resume_checkpoint, prepare_output_dir

    config = _load_run_config(args)
    if config.training.engine != "harness":
        raise HarnessError(
            f"training.engine: {config.training.engine} is for harness validate; harness train runs the harness loop"
        )
    config, prediction = _preflight(config)
    world = distributed.init_from_env()

    def say(*parts: Any, **kwargs: Any) -> None:
        if world.is_main:
            print(*parts, **kwargs)

    output_dir = Path(config.output_dir)
    resume = None
    if args.resume:
        resume = find_resume_checkpoint(output_dir) if args.resume == "auto" else Path(args.resume)
    if world.is_main:
        prepare_output_dir(output_dir, resuming=resume is not None, overwrite=args.overwrite)
    distributed.barrier(world)
    run = prepare_run(config)
    say(f"model: {run.resolved.description}")
    run.build()
    assert run.adapter is not None
    say(f"adapter: {run.adapter.describe()}")
    stats = run.data.stats
    say(
        f"data: {len(run.data.train)} train / {len(run.data.validation)} validation examples, "
        f"{stats.tokens} tokens, {stats.truncated} truncated, dropped {dict(stats.dropped) or 'none'}"
    )
    trainer = run.trainer()
    ranks = f" x {world.size} ranks" if world.distributed else ""
    say(
        f"training {trainer.total_steps} steps ({trainer.steps_per_epoch} per epoch) on {run.device}{ranks}, "
        f"metrics -> {output_dir / 'metrics.jsonl'}" + (f", resuming from {resume}" if resume else "")
    )

    def log(record: Any) -> None:
        if record.step % config.training.logging_steps == 0 or record.step == trainer.total_steps:
            say(
                f"step {record.step}/{trainer.total_steps} loss {record.loss:.4f} lr {record.lr:.2e} "
                f"grad norm {record.grad_norm:.3f} {record.tokens_per_s:.0f} tok/s mem {record.memory_mb:.0f} MB",
                flush=True,
            )

    trainer.on_step = log
    try:
        with _stop_on_signals(trainer):
            result = trainer.train(resume_from=resume)
    except TrainingInterrupted as stop:
        say(
            f"interrupted by {signal.Signals(stop.signum).name} after step {stop.step}: checkpoint {stop.checkpoint}, "
            f"metrics {output_dir / 'metrics.jsonl'}; resume with: {resume_command(args, stop.checkpoint)}",
            file=sys.stderr,
        )
        return 128 + stop.signum
    except TrainingError as exc:
        # Raised by the loop itself (non-finite loss, out of memory, a checkpoint it cannot write),
        # not by the input checks above, which exit 2 through main. The failing rank may not be rank 0.
        print(f"error: {exc}", file=sys.stderr)
        _tell_other_ranks(str(exc), EXIT_TRAINING_FAILED)
        return EXIT_TRAINING_FAILED
    if world.is_main:
        export_adapter(run.model, output_dir)
    distributed.barrier(world)
    say(f"checkpoints: {', '.join(p.name for p in result.checkpoints)} in {output_dir}")
    say(f"final adapter: {output_dir / 'adapter_model.safetensors'} (load with peft.PeftModel.from_pretrained)")
    if prediction is not None:
        from harness.memory.measure import cuda_peak_gib
        from harness.memory.probe import format_peaks

        say(f"memory: {format_peaks(prediction['predicted_peak_gib'], cuda_peak_gib(run.device))}")
    return 0


def resume_command(
    args: argparse.Namespace,
    checkpoint: Path | None,
    *,
    environ: Mapping[str, str] | None = None,
    argv0: str | None = None,
) -> str:
    """The command that resumes an interrupted ``harness train``: the same launcher (``harness``,
    ``python -m harness`` or ``torchrun --nproc_per_node=N [--nnodes=M] -m harness``), the same options,
    and ``--resume CHECKPOINT``. Built from the parsed arguments, so it parses whatever the spelling
    of the original (abbreviations, ``--opt=value``, ``--resume`` before the config). A multi-node run
    needs its rendezvous options added back by hand."""
    environ = os.environ if environ is None else environ
    argv0 = sys.argv[0] if argv0 is None else argv0
    if "LOCAL_WORLD_SIZE" in environ and "WORLD_SIZE" in environ:
        per_node = int(environ["LOCAL_WORLD_SIZE"])
        nodes = max(1, int(environ["WORLD_SIZE"]) // max(1, per_node))
        words = ["torchrun", f"--nproc_per_node={per_node}", *([f"--nnodes={nodes}"] if nodes > 1 else [])]
        words += ["-m", "harness"]
    elif Path(argv0).name == "__main__.py":
        words = [sys.executable, "-m", "harness"]
    else:
        words = ["harness"]
    if args.verbose:
        words.append("--verbose")
    words += ["train", str(args.config)]
    if args.max_steps is not None:
        words += ["--max-steps", str(args.max_steps)]
    if args.skip_nonfinite is not None:
        words += ["--skip-nonfinite", str(args.skip_nonfinite)]
    if args.allow_pickle:
        words.append("--allow-pickle")
    for override in args.set:
        words += ["--set", override]
    if args.output_dir is not None:
        words += ["--output-dir", args.output_dir]
    words.append("--resume")
    if checkpoint is not None:
        words.append(str(checkpoint))
    return shlex.join(words)


@contextlib.contextmanager
def _stop_on_signals(trainer: Any) -> Iterator[None]:
    """SIGINT/SIGTERM ask the trainer to stop after the step in progress and checkpoint; a second
    signal gets the default behaviour (stop at once)."""
    watched = (signal.SIGINT, signal.SIGTERM)
    previous: dict[int, Any] = {number: signal.getsignal(number) for number in watched}

    def handler(signum: int, _frame: Any) -> None:
        trainer.request_stop(signum)
        signal.signal(signum, previous[signum])

    for watched_signal in watched:
        signal.signal(watched_signal, handler)
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def _cmd_validate(args: argparse.Namespace) -> int:
    """Run the criteria; under torchrun every rank trains and rank 0 alone checks, prints and reports."""
    from harness import distributed
    from harness.report import console_table, write_report
    from harness.training import refuse_foreign_folder
    from harness.validation import validate

    config = _load_run_config(args)
    under_torchrun = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if under_torchrun and (config.training.engine == "trl" or config.validation.compare_engines):
        raise HarnessError("--engine trl/both: TRL's SFTTrainer is validated in one process; run without torchrun")
    config, prediction = _preflight(config)
    world = distributed.init_from_env()
    if world.is_main:
        _announce_ignored(config)
    out = Path(args.out) if args.out else Path(config.output_dir) / time.strftime("validate-%Y%m%d-%H%M%S")
    out = Path(distributed.broadcast_from_main(str(out), world))
    if world.is_main:
        refuse_foreign_folder(out, overwrite=args.overwrite)
    started = time.perf_counter()

    def progress(message: str) -> None:
        if world.is_main:
            print(f"[{time.perf_counter() - started:6.1f}s] {message}", flush=True)

    if world.is_main:
        ranks = f" on {world.size} ranks" if world.distributed else ""
        print(f"validating {config.source} -> {out}{ranks}", flush=True)
    outcome = validate(config, out, on_progress=progress, preflight=prediction)
    if not world.is_main:
        return 0
    write_report(outcome)
    print()
    print(console_table(outcome))
    failed = len(outcome.failed)
    print(
        f"\n{'PASS' if not failed else 'FAIL'}: {sum(c.status == 'PASS' for c in outcome.criteria)} passed, "
        f"{failed} failed, {sum(c.status == 'SKIPPED' for c in outcome.criteria)} skipped in "
        f"{time.perf_counter() - started:.0f} s; report: {out / 'report.md'}"
    )
    return outcome.exit_code


def _cmd_data_preview(args: argparse.Namespace) -> int:
    from harness.data.formatting import IGNORE_INDEX, prepare_data
    from harness.loading import load_tokenizer
    from harness.resolve import resolve_model

    config = _load_run_config(args)
    tokenizer = load_tokenizer(resolve_model(config.base_model).path)
    data = prepare_data(config.dataset, tokenizer, config.seed)
    for index, example in enumerate(data.train[: args.n], 1):
        pieces: list[tuple[bool, str]] = []
        current: list[int] = []
        is_target = False
        for token, label in zip(example.input_ids, example.labels):
            target = label != IGNORE_INDEX
            if target != is_target and current:
                pieces.append((is_target, tokenizer.decode(current)))
                current = []
            current.append(token)
            is_target = target
        if current:
            pieces.append((is_target, tokenizer.decode(current)))
        rendered = "".join(f"[[{text}]]" if target else text for target, text in pieces)
        print(
            f"--- example {index}: {len(example.input_ids)} tokens, {example.num_targets} targets"
            f"{' (truncated)' if example.truncated else ''}; [[...]] = trained-on target tokens"
        )
        print(rendered)
    stats = data.stats
    print("---")
    print(f"source: {data.source}")
    print(
        f"rows read: {stats.rows_read}; dropped: {sum(stats.dropped.values())}"
        + "".join(f"\n  {count} x {reason}" for reason, count in stats.dropped.items())
    )
    print(f"truncated: {stats.truncated}; examples: {len(data.train)} train / {len(data.validation)} validation")
    print(f"tokens: {stats.tokens}; target tokens: {stats.target_tokens}")
    return 0


def _cmd_data_subset(args: argparse.Namespace) -> int:
    from harness.data.sources import write_subset

    if args.first <= 0:
        raise HarnessError(f"--first: must be an integer > 0, got {args.first}")
    count = write_subset(args.source, args.first, args.output)
    print(f"wrote {count} rows to {args.output}")
    return 0


def _cmd_reference_record(args: argparse.Namespace) -> int:
    from harness.reference import REFERENCES, record

    names = args.name or list(REFERENCES)
    unknown = [n for n in names if n not in REFERENCES]
    if unknown:
        raise HarnessError(f"{unknown[0]}: no such reference; there are {', '.join(REFERENCES)}")
    for name in names:
        print(f"{name}: training twice ...", flush=True)
        print(f"  wrote {record(name, args.out)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    lines = __doc__.splitlines()
    parser = argparse.ArgumentParser(
        prog="harness",
        description=lines[0],
        epilog="exit codes:\n" + "\n".join(line for line in lines if line[:1] == " " and line.strip()[:1].isdigit()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show library logs")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    fetch = commands.add_parser("fetch", help="resolve a model (cache, download or bundled copy) and print where")
    fetch.add_argument("model", help="hub id (org/name) or local directory")
    fetch.add_argument("--generate", metavar="PROMPT", help="also load it and greedily continue PROMPT")
    fetch.set_defaults(handler=_cmd_fetch)

    check = commands.add_parser("check-config", help="validate a run config and print it resolved")
    check.add_argument("config", type=Path)
    check.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key")
    check.set_defaults(handler=_cmd_check_config)

    train = commands.add_parser("train", help="fine-tune as a config says, writing checkpoints and metrics")
    train.add_argument("config", type=Path)
    _run_options(train)
    train.add_argument("--output-dir", help="override output_dir")
    train.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        metavar="CHECKPOINT",
        help="continue from a checkpoint (default: the newest complete one in output_dir)",
    )
    train.add_argument("--overwrite", action="store_true", help="replace a previous run in output_dir")
    train.set_defaults(handler=_cmd_train)

    probe = commands.add_parser("probe", help="predict a run's peak GPU memory on this machine (no GPU, no weights)")
    probe.add_argument("config", type=Path)
    probe.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key")
    probe.add_argument("--json", action="store_true", help="print one JSON object")
    probe.add_argument("--gpu-gib", type=float, metavar="N", help="also say whether it fits in N GiB, and how")
    probe.add_argument(
        "--no-measure",
        action="store_true",
        help="on a machine with a GPU, skip the real steps (random init) measured beside the prediction",
    )
    probe.set_defaults(handler=_cmd_probe)

    validate = commands.add_parser("validate", help="run the success criteria and write a report")
    validate.add_argument("config", type=Path, nargs="?", help="run config (default: the embedded default)")
    _run_options(validate)
    validate.add_argument(
        "--engine",
        choices=("harness", "trl", "both"),
        help="train with the harness loop, TRL's SFTTrainer (pip install -e '.[trl]'), or both and compare "
        "their per-step losses (default: the config's training.engine)",
    )
    validate.add_argument("--out", help="report folder (default: <output_dir>/validate-<time>)")
    validate.add_argument("--overwrite", action="store_true", help="write into a --out folder that holds files")
    validate.set_defaults(handler=_cmd_validate)

    data = commands.add_parser("data", help="inspect and cut datasets")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    preview = data_commands.add_parser("preview", help="show formatted examples with target tokens marked")
    preview.add_argument("config", type=Path, nargs="?")
    preview.add_argument("-n", type=int, default=3, help="examples to show")
    preview.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    preview.set_defaults(handler=_cmd_data_preview)
    subset = data_commands.add_parser("subset", help="write the first N rows of a source as JSONL")
    subset.add_argument("source", help="file, directory or hub id")
    subset.add_argument("--first", type=int, required=True)
    subset.add_argument("-o", "--output", type=Path, required=True)
    subset.set_defaults(handler=_cmd_data_subset)

    reference = commands.add_parser("reference", help="recorded reference losses of fixed small runs")
    reference_commands = reference.add_subparsers(dest="reference_command", required=True, metavar="ACTION")
    record = reference_commands.add_parser(
        "record", help="train each reference config twice on the CPU and write its losses, versions and tolerance"
    )
    record.add_argument("name", nargs="*", help="references to record (default: all)")
    record.add_argument("--out", type=Path, default=Path("tests/reference"), help="folder (default: tests/reference)")
    record.set_defaults(handler=_cmd_reference_record)
    return parser


def _run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-steps", type=int, help="cap the optimizer steps")
    parser.add_argument(
        "--skip-nonfinite",
        type=int,
        metavar="N",
        help="skip up to N optimizer steps whose loss or gradient is NaN/Inf (reported)",
    )
    parser.add_argument(
        "--allow-pickle",
        action="store_true",
        help="load *.bin/*.pt weights when a snapshot has no safetensors (pickles can run code)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config key, e.g. --set training.learning_rate=1e-4",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    if not args.verbose:
        _quiet_libraries()
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        _tell_other_ranks(str(exc), EXIT_BAD_INPUT)
        return EXIT_BAD_INPUT
    except Exception as exc:
        _tell_other_ranks(f"{type(exc).__name__}: {exc}", 1)  # 1: Python's code for the traceback below
        raise


def _tell_other_ranks(message: str, code: int) -> None:
    """Under torchrun, make the other ranks exit now with this rank's code instead of waiting in a
    collective for it (a single process never imported ``harness.distributed``'s process group)."""
    distributed = sys.modules.get("harness.distributed")
    if distributed is not None:
        distributed.report_failure(message, code)


def _quiet_libraries() -> None:
    """Library progress bars, deprecation notices and optional-kernel advice are noise in a report a
    person reads; --verbose shows them."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*kernels.*")
    # TRL's dataset preparation (--engine trl) and PEFT's offline look-up of the base's config.json.
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore", message=".*(Unable to fetch remote file|Could not find a config file).*")


if __name__ == "__main__":
    sys.exit(main())
