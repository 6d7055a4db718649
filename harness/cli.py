"""The ``harness`` command line.

Every user-caused failure is a ``HarnessError`` whose one-line message is printed as ``error: ...``
with exit code 2; nothing else is caught, so real bugs still show their traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from harness.errors import HarnessError

EXIT_BAD_INPUT = 2


def _cmd_fetch(args: argparse.Namespace) -> int:
    from harness.model_info import ModelInfo
    from harness.resolve import resolve_model

    start = time.perf_counter()
    resolved = resolve_model(args.model)
    elapsed = time.perf_counter() - start
    info = ModelInfo.from_config(resolved.path)
    print(f"{args.model}: {resolved.description}")
    print(f"  source: {resolved.source} ({elapsed:.2f} s)")
    print(f"  architecture: hidden {info.hidden_size}, layers {info.num_layers}, heads "
          f"{info.num_attention_heads}, kv heads {info.num_kv_heads}, intermediate {info.intermediate_size}, "
          f"vocab {info.vocab_size}, rope theta {info.rope_theta:g}")
    if args.generate:
        from harness.generation import greedy_generate
        from harness.loading import load_model, load_tokenizer

        tokenizer = load_tokenizer(resolved.path)
        model = load_model(resolved.path)
        text = greedy_generate(model, tokenizer, [args.generate], max_new_tokens=16)[0]
        print(f"  generate: {args.generate!r} -> {text!r}")
    return 0


def _cmd_check_config(args: argparse.Namespace) -> int:
    from harness.config import load_config

    config = load_config(args.config, args.set)
    print(f"# {config.source}: valid")
    print(config.to_yaml(), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="harness", description=__doc__.splitlines()[0])
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(name)s: %(message)s")
    if not args.verbose:
        _quiet_libraries()
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _quiet_libraries() -> None:
    """Library progress bars and advice are noise in a report a person reads."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


if __name__ == "__main__":
    sys.exit(main())
