"""The small pieces of the Trainer's state a resume depends on, each against a reading that does not go
through the harness: the peak memory it logs (the kernel's own VmHWM on CPU, a stubbed CUDA allocator
on GPU), the RNG round trip (the same draws after a restore, CUDA generators included) and the data
fingerprint a checkpoint is refused on."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest
import torch

import harness.training
from harness.checkpoint import TrainingState
from harness.data.formatting import Example
from harness.errors import CheckpointError, TrainingError
from harness.training import Trainer, _rng_state, _set_rng_state, data_fingerprint, memory_mb
from tests.unit.test_trainer_plan import plan

pytestmark = pytest.mark.unit


def _peak_rss_mib_from_proc() -> float:
    """The kernel's peak resident set size of this process (VmHWM, in kB) in MiB."""
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.M).group(1)) / 1024


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux /proc")
def test_cpu_peak_memory_is_the_kernels_peak_resident_set_in_mib():
    # A peak of at least 1 GiB, so that a unit off by 1/1024 is off by more than a MiB; the kernel keeps
    # the two counters a few dozen pages apart (measured: 0.2 MiB), hence the half-MiB tolerance.
    torch.ones(2**28).sum()
    peak = _peak_rss_mib_from_proc()
    measured = memory_mb(torch.device("cpu"))
    print(f"memory_mb {measured:.3f} MiB, VmHWM {peak:.3f} MiB")
    assert peak > 1024
    assert measured == pytest.approx(peak, abs=0.5)


def test_cuda_peak_memory_is_the_allocators_peak_in_mib(monkeypatch):
    asked = []

    def peak(device):
        asked.append(device)
        return 3 * 2**30 + 2**19  # 3 GiB and half a MiB, in bytes

    monkeypatch.setattr(torch.cuda, "max_memory_allocated", peak)
    cuda = torch.device("cuda", 1)
    assert memory_mb(cuda) == 3 * 1024 + 0.5
    assert asked == [cuda]


def _draws() -> tuple[list[float], float]:
    return torch.rand(4).tolist(), random.random()


def test_restoring_the_rng_state_repeats_the_torch_and_python_draws():
    torch.manual_seed(1)
    random.seed(1)
    state = _rng_state()
    first = _draws()
    assert _draws() != first  # the generators moved on
    _set_rng_state(state)
    assert _draws() == first


class _FakeCudaGenerators:
    """Stands in for torch.cuda's generator API on a machine without CUDA."""

    def __init__(self) -> None:
        self.states = [torch.tensor([1, 2], dtype=torch.uint8), torch.tensor([3], dtype=torch.uint8)]
        self.restored: list[torch.Tensor] | None = None

    def get_rng_state_all(self) -> list[torch.Tensor]:
        return [s.clone() for s in self.states]

    def set_rng_state_all(self, states: list[torch.Tensor]) -> None:
        self.restored = states


def test_the_cuda_generators_are_saved_and_restored_when_cuda_is_present(monkeypatch):
    fake = _FakeCudaGenerators()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", fake.get_rng_state_all)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", fake.set_rng_state_all)
    state = _rng_state()
    assert [s.tolist() for s in state["cuda"]] == [[1, 2], [3]]
    _set_rng_state(state)
    assert [s.tolist() for s in fake.restored] == [[1, 2], [3]]


def test_a_cpu_checkpoint_restores_on_a_cuda_machine_without_touching_its_generators(monkeypatch):
    fake = _FakeCudaGenerators()
    state = _rng_state()  # written where CUDA is absent: no "cuda" entry
    assert "cuda" not in state
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", fake.set_rng_state_all)
    _set_rng_state(state)
    assert fake.restored is None


def test_cuda_generators_are_not_asked_for_without_cuda(monkeypatch):
    def fail(*args):
        raise AssertionError("asked CUDA for its generators on a machine without CUDA")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", fail)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", fail)
    state = _rng_state()
    assert set(state) == {"torch", "python"}
    _set_rng_state(state | {"cuda": [torch.tensor([1], dtype=torch.uint8)]})


EXAMPLES = [Example([1, 2, 3], [-100, 2, 3]), Example([4, 5], [4, 5])]


def test_the_data_fingerprint_is_sixteen_hex_digits_and_repeatable():
    fingerprint = data_fingerprint(EXAMPLES)
    assert re.fullmatch(r"[0-9a-f]{16}", fingerprint)
    assert data_fingerprint([Example(list(e.input_ids), list(e.labels)) for e in EXAMPLES]) == fingerprint


@pytest.mark.parametrize(
    "changed",
    [
        [Example([1, 2, 9], [-100, 2, 3]), EXAMPLES[1]],  # one token id
        [Example([1, 2, 3], [1, 2, 3]), EXAMPLES[1]],  # the prompt now trained on: labels only
        list(reversed(EXAMPLES)),  # the order
        EXAMPLES[:1],  # one example fewer
    ],
    ids=["token", "labels", "order", "fewer"],
)
def test_the_data_fingerprint_changes_with_ids_labels_order_and_count(changed):
    assert data_fingerprint(changed) != data_fingerprint(EXAMPLES)


def stand_in_trainer(tmp_path) -> Trainer:
    """A Trainer over a stand-in linear model (test_trainer_plan's), capped at 8 steps."""
    return plan(tmp_path, "training.max_steps=8")


@pytest.mark.parametrize(
    ("strerror", "shown"), [("No space left on device", "No space left on device"), (None, "lost mount")]
)
def test_a_failed_save_names_the_step_the_folder_and_the_systems_reason(tmp_path, monkeypatch, strerror, shown):
    def failing_save(model, directory, state):
        raise OSError(28, strerror) if strerror else OSError("lost mount")

    monkeypatch.setattr(harness.training, "save_checkpoint", failing_save)
    with pytest.raises(TrainingError) as raised:
        stand_in_trainer(tmp_path)._save(3, 0, 3)
    assert str(raised.value) == f"step 3: cannot write {tmp_path / 'checkpoint-000003'}: {shown}"


def restoring(tmp_path, monkeypatch, **extra) -> str:
    """The refusal a resume from a checkpoint whose plan differs by ``extra`` gives."""
    trainer = stand_in_trainer(tmp_path)
    written = trainer._plan_identity() | {"skipped": []} | extra
    state = TrainingState(1, 0, 1, {}, {}, {}, written)
    monkeypatch.setattr(harness.training, "load_training_state", lambda directory: state)
    with pytest.raises(CheckpointError) as raised:
        trainer._restore(tmp_path / "checkpoint-000001")
    return str(raised.value)


def test_a_checkpoint_planned_for_another_length_is_refused(tmp_path, monkeypatch):
    assert restoring(tmp_path, monkeypatch, total_steps=20) == (
        f"{tmp_path / 'checkpoint-000001'}: planned for 20 steps, this run plans 8; resume with the same config"
    )


@pytest.mark.parametrize(("key", "theirs"), [("seed", 7), ("world_size", 2), ("data_fingerprint", "0" * 16)])
def test_a_checkpoint_of_another_seed_world_or_data_is_refused_naming_both(tmp_path, monkeypatch, key, theirs):
    ours = stand_in_trainer(tmp_path / "ours")._plan_identity()[key]
    assert restoring(tmp_path, monkeypatch, **{key: theirs}) == (
        f"{tmp_path / 'checkpoint-000001'}: written with {key} {theirs}, this run has {ours}; "
        "resume with the same config, data and number of ranks"
    )
