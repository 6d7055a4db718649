"""The loss path's cost: what the chunked LM-head loss keeps for backward (measured with saved-tensor
hooks against the previous implementation, written out here), its gradients against plain autograd
cross-entropy, and host syncs per optimizer step instead of per micro batch."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.checkpoint import checkpoint

from harness.data.batching import pad_batch
from harness.loading import load_model
from harness.training import LOSS_CHUNK_TOKENS, target_loss_sum, training_step
from tests.unit.test_batching import make_examples

# 1.5 chunks of targets, a vocab large enough that logits dominate, hidden states in bf16 as on a GPU.
ROWS, HIDDEN, VOCAB = LOSS_CHUNK_TOKENS * 3 // 2, 64, 2048


def previous_loss(hidden, weight, targets, recompute):
    """The loss as harness computed it before (boolean-indexed rows, chunks of F.cross_entropy on fp32
    logits, optionally under activation checkpointing): the baseline for what is kept."""

    def chunk(h, t):
        return F.cross_entropy(F.linear(h, weight).float(), t, reduction="sum")

    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, targets.numel(), LOSS_CHUNK_TOKENS):
        piece = (hidden[start : start + LOSS_CHUNK_TOKENS], targets[start : start + LOSS_CHUNK_TOKENS])
        total = total + (checkpoint(chunk, *piece, use_reentrant=False) if recompute else chunk(*piece))
    return total


class Saved:
    """A tensor as the autograd graph holds it; alive exactly as long as the graph keeps it."""

    def __init__(self, tensor):
        self.tensor = tensor


def kept_for_backward(loss_fn, hidden, weight, targets) -> tuple[int, set[torch.dtype], torch.Tensor]:
    """Bytes of distinct storages the autograd graph still holds for backward once the loss is
    computed (transient graphs built and freed inside the forward do not count), and their dtypes."""
    alive: weakref.WeakSet[Saved] = weakref.WeakSet()

    def pack(tensor):
        saved = Saved(tensor)
        alive.add(saved)
        return saved

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda saved: saved.tensor):
        loss = loss_fn(hidden, weight, targets)
    gc.collect()
    kept = [s.tensor for s in alive if s.tensor.data_ptr() not in (hidden.data_ptr(), weight.data_ptr())]
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in kept}
    return sum(storages.values()), {t.dtype for t in kept if t.is_floating_point()}, loss


def inputs(dtype=torch.bfloat16, weight_grad=False):
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(ROWS, HIDDEN, generator=generator).to(dtype).requires_grad_()
    weight = (torch.randn(VOCAB, HIDDEN, generator=generator) / 8).to(dtype).requires_grad_(weight_grad)
    return hidden, weight, torch.randint(0, VOCAB, (ROWS,), generator=generator)


def test_chunked_loss_keeps_only_the_hidden_gradient_in_its_dtype():
    hidden, weight, targets = inputs()
    new, new_dtypes, _ = kept_for_backward(target_loss_sum, hidden, weight, targets)
    old, _, _ = kept_for_backward(lambda *a: previous_loss(*a, recompute=False), hidden, weight, targets)
    old_recompute, _, _ = kept_for_backward(lambda *a: previous_loss(*a, recompute=True), hidden, weight, targets)
    print(
        f"kept for backward ({ROWS} targets, vocab {VOCAB}, bf16 hidden): new {new / 2**20:.2f} MiB, "
        f"previous {old / 2**20:.2f} MiB, previous with recompute {old_recompute / 2**20:.2f} MiB"
    )
    assert new_dtypes == {torch.bfloat16}
    assert new == ROWS * HIDDEN * 2  # one bf16 gradient of the hidden rows
    assert new <= old_recompute
    assert old >= ROWS * VOCAB * 4  # the previous path kept every chunk's fp32 log-softmax: measurable


@pytest.mark.parametrize(("weight_grad", "incoming"), [(False, 0.5), (True, 0.5), (True, 3.0)])
def test_chunked_loss_and_gradients_equal_autograd_cross_entropy(weight_grad, incoming):
    """Computed for an incoming gradient of 0.5: the hidden gradient is bitwise autograd's when 0.5
    comes, and right (rounding apart) when another one does."""
    hidden, weight, targets = inputs(torch.float32, weight_grad)
    ours = target_loss_sum(hidden, weight, targets, grad_scale=0.5)
    (ours * incoming).backward()
    our_grads = [hidden.grad.clone()] + ([weight.grad.clone()] if weight_grad else [])
    hidden.grad, weight.grad = None, None
    theirs = F.cross_entropy(F.linear(hidden, weight).float(), targets, reduction="sum")
    (theirs * incoming).backward()
    their_grads = [hidden.grad] + ([weight.grad] if weight_grad else [])
    diffs = [((a - b).abs().max() / b.abs().max()).item() for a, b in zip(our_grads, their_grads)]
    print(f"incoming {incoming}: loss {float(ours):.6f} vs {float(theirs):.6f}; gradient max rel diffs {diffs}")
    assert float(ours) == pytest.approx(float(theirs), rel=1e-6)
    # Measured: hidden gradient bitwise equal for 0.5; weight gradient (summed over chunks) 4e-7; for
    # another incoming gradient 1.3e-6.
    assert (diffs[0] == 0.0 or incoming != 0.5) and max(diffs) < 5e-6
    wrong = F.cross_entropy(F.linear(hidden, weight), targets.roll(1), reduction="sum")
    assert abs(float(wrong) - float(theirs)) > 1e-3 * abs(float(theirs))  # the comparison can fail


class HostReads(TorchDispatchMode):
    """Counts the ops that make the host wait for the device: scalar reads and data-dependent shapes."""

    OPS = {"_local_scalar_dense", "nonzero", "masked_select", "is_nonzero", "equal"}

    def __init__(self):
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__.split(".")[0]
        boolean_index = name == "index" and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] if len(args) > 1 else [])
        )
        if name in self.OPS or boolean_index:
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


def host_reads(fn) -> list[str]:
    with HostReads() as counter:
        fn()
    return counter.seen


def test_host_reads_are_per_optimizer_step_not_per_micro_batch(tiny_llama):
    """The extra micro batches of an accumulated step add only the model's own mask building
    (transformers checks the padding mask on the host); the loss path adds none."""
    model = load_model(tiny_llama.path)
    batch = pad_batch(make_examples(4, seed=5), pad_id=2)
    one = host_reads(lambda: training_step(model, [batch]))
    three = host_reads(lambda: training_step(model, [batch] * 3))
    forward = host_reads(lambda: model.model(**{k: v for k, v in batch.inputs.items() if k != "labels"}))
    print(f"host reads: step of 1 micro batch {one}, of 3 {three}; the model's forward alone {forward}")
    assert len(three) - len(one) == 2 * len(forward)
    with torch.no_grad():
        hidden = torch.randn(2, 5, 4)
        labels = torch.tensor([[1, -100, 3, 4, -100], [-100, 2, 2, 2, 2]])
        assert host_reads(lambda: hidden[labels != -100]) == ["index"]  # the counter sees boolean indexing
        assert host_reads(lambda: float(hidden.sum())) == ["_local_scalar_dense"]


def test_without_gradients_every_chunk_is_summed():
    """Evaluation (no_grad) takes the path that computes no gradient: it must still add all 1.5 chunks."""
    hidden, weight, targets = inputs(torch.float32)
    with torch.no_grad():
        ours = target_loss_sum(hidden, weight, targets)
        logits = F.linear(hidden, weight)
        first_chunk = F.cross_entropy(logits[:LOSS_CHUNK_TOKENS], targets[:LOSS_CHUNK_TOKENS], reduction="sum")
        theirs = F.cross_entropy(logits, targets, reduction="sum")
    print(
        f"no-grad loss sum {float(ours):.3f}, cross-entropy {float(theirs):.3f}, first chunk {float(first_chunk):.3f}"
    )
    assert float(ours) == pytest.approx(float(theirs), rel=1e-6)
    assert abs(float(first_chunk) - float(theirs)) > 0.1 * float(theirs)  # a missing chunk would show


def test_the_training_forward_builds_no_key_value_cache(tiny_llama):
    """A cache is for generation; in training it only holds every layer's keys and values in memory."""
    model = load_model(tiny_llama.path)
    assert model.config.use_cache  # so the body would build one unless told not to
    outputs = []
    model.model.register_forward_hook(lambda module, args, output: outputs.append(output))
    training_step(model, pad_batch(make_examples(2, seed=5), pad_id=2))
    assert len(outputs) == 1 and outputs[0].cache is None
