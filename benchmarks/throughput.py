"""Training throughput: the harness against a plain transformers + peft loop, same data, same run.

The plain loop is what a user writes today (and what ../shared/reference/baselines.md measured):
alpaca rows padded to the longest in each micro batch, attention mask on, ``model(labels=...)`` loss.
The harness packs rows into full sequences (restarting positions, no cross-example attention) and runs
the LM head on target tokens only. Both train the same LoRA on the same examples for the same number
of optimizer steps; we report real (non-padding) tokens/s, target tokens/s, step time, peak memory,
MFU on CUDA, and the harness/plain ratio.

    python -m benchmarks.throughput --model HuggingFaceTB/SmolLM2-135M --batch 4 --steps 8
    python -m benchmarks.throughput --model TinyLlama/TinyLlama-1.1B-Chat-v1.0 --adapter qlora --batch 2

The same loops run under pytest-benchmark in benchmarks/test_training_speed.py.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.flops import frozen_base_flops_per_token, mfu
from harness.config import load_config
from harness.data.batching import Batch, epoch_batches
from harness.data.formatting import pad_token_id
from harness.recipe import prepare_run
from harness.training import build_optimizer, training_step

ALPACA = Path(__file__).resolve().parents[2] / "shared" / "data" / "alpaca_data_1k.json"


def plain_step(model: Any, batch: Batch, optimizer: torch.optim.Optimizer) -> None:
    """One step as plain transformers + peft does it: full logits, HF's mean loss."""
    loss = model(**batch.inputs).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def measure(name: str, run: Any, batches: list[Batch], step: Any, warmup: int) -> dict[str, Any]:
    device = run.device
    optimizer = build_optimizer(run.model, 1e-4, 0.0, device)
    times, tokens, targets = [], 0, 0
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    for index, batch in enumerate(batches):
        batch = batch.to(device)
        began = time.perf_counter()
        step(run.model, batch, optimizer)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if index >= warmup:
            times.append(time.perf_counter() - began)
            tokens += batch.num_tokens
            targets += batch.num_targets
    seconds = sum(times)
    result = {
        "name": name,
        "steps": len(times),
        "step_s": statistics.median(times),
        "tokens_per_s": tokens / seconds,
        "target_tokens_per_s": targets / seconds,
        "padding_waste": 1 - tokens / sum(b.inputs["input_ids"].numel() for b in batches[warmup:]),
        "peak_gb": torch.cuda.max_memory_allocated() / 1e9 if device.type == "cuda" else None,
    }
    width = statistics.mean(b.inputs["input_ids"].shape[1] for b in batches[warmup:])
    result["flops_per_token"] = frozen_base_flops_per_token(run.info, round(width))
    result["mfu"] = mfu(result["tokens_per_s"], result["flops_per_token"], device_name(), str(run.dtype))
    return result


def device_name() -> str:
    """What torch calls the device the run uses: the CUDA device name, or ``cpu``."""
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M")
    parser.add_argument("--adapter", default="lora", choices=["lora", "qlora"])
    parser.add_argument("--batch", type=int, default=4, help="micro batch (rows) for both loops")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--data", default=str(ALPACA) if ALPACA.is_file() else "builtin:tasks")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/throughput.json"))
    args = parser.parse_args()

    sets = [
        f"base_model={args.model}",
        f"adapter={args.adapter}",
        "lora.r=16",
        "lora.alpha=32",
        "lora.target_modules=[q_proj, k_proj, v_proj, o_proj]",
        f"dataset.path={args.data}",
        f"dataset.max_length={args.max_length}",
        "dataset.train_split=1.0",
        f"training.batch_size={args.batch}",
    ]
    results = []
    for name, packing, step in (
        ("plain transformers+peft", False, lambda m, b, o: plain_step(m, b, o)),
        ("harness", True, lambda m, b, o: training_step(m, b, o, max_grad_norm=1.0)),
    ):
        run = prepare_run(load_config(None, sets + [f"training.packing={str(packing).lower()}"]))
        run.build()
        batches = epoch_batches(
            run.data.train,
            batch_size=args.batch,
            max_length=args.max_length,
            pad_id=pad_token_id(run.tokenizer),
            seed=0,
            epoch=0,
            packing=packing,
        )
        results.append(measure(name, run, batches[: args.steps + args.warmup], step, args.warmup))
        del run
    plain, ours = results
    ratio = ours["target_tokens_per_s"] / plain["target_tokens_per_s"]
    device = (
        "cuda: " + torch.cuda.get_device_name(0)
        if torch.cuda.is_available()
        else f"cpu ({torch.get_num_threads()} threads)"
    )
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "device": device,
        "torch": torch.__version__,
        "args": vars(args) | {"out": str(args.out)},
        "results": results,
        "target_tokens_per_s_ratio": ratio,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{args.model} {args.adapter}, micro batch {args.batch}, max length {args.max_length}, {device}")
    print("| loop | real tok/s | target tok/s | step s | padding waste | peak GB | MFU |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        peak = f"{r['peak_gb']:.2f}" if r["peak_gb"] is not None else "n/a"
        util = f"{r['mfu']:.1%}" if r["mfu"] is not None else "unknown"
        print(
            f"| {r['name']} | {r['tokens_per_s']:.0f} | {r['target_tokens_per_s']:.0f} | {r['step_s']:.2f} | "
            f"{r['padding_waste']:.0%} | {peak} | {util} |"
        )
    print(f"harness / plain, target tokens per second: x{ratio:.2f}")


if __name__ == "__main__":
    main()
