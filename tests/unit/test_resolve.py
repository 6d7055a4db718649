"""Model resolution order: local path, $HF_HOME/hub, ~/.cache, download, bundled copy."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from harness.bundled import TINY_RANDOM_LLAMA_CONFIG, RandomInitBundle, read_marker
from harness.errors import ModelResolutionError
from harness.resolve import DOWNLOAD_PATTERNS, resolve_model
from tests.fake_hub import COMMIT, FakeHub


@pytest.fixture
def caches(tmp_path, monkeypatch):
    """Point every hub cache at empty temporary folders and go offline."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


def fake_snapshot(cache_root, repo_id, revision="abc123", ref=True):
    repo = cache_root / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps(TINY_RANDOM_LLAMA_CONFIG))
    (snapshot / "model.safetensors").write_bytes(b"")
    if ref:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(revision)
    return snapshot


def test_local_directory_wins(caches):
    local = caches / "my-model"
    local.mkdir()
    (local / "config.json").write_text("{}")
    resolved = resolve_model(str(local))
    assert (resolved.path, resolved.source) == (local, "local")


def test_local_directory_without_config_is_an_error(caches):
    (caches / "empty").mkdir()
    with pytest.raises(ModelResolutionError, match="empty: directory has no config.json"):
        resolve_model(str(caches / "empty"))


def test_missing_local_path_is_an_error(caches):
    with pytest.raises(ModelResolutionError, match="no such model directory"):
        resolve_model("./does/not/exist")


def test_hf_home_cache_honours_refs_main(caches):
    hub = caches / "hf_home" / "hub"
    fake_snapshot(hub, "org/model", "old", ref=False)
    wanted = fake_snapshot(hub, "org/model", "pinned")
    resolved = resolve_model("org/model")
    assert (resolved.path, resolved.source) == (wanted, "hf_home")


def test_user_cache_is_searched_after_hf_home(caches):
    wanted = fake_snapshot(caches / "home" / ".cache" / "huggingface" / "hub", "org/model")
    resolved = resolve_model("org/model")
    assert (resolved.path, resolved.source) == (wanted, "user_cache")


def test_offline_miss_fails_fast_listing_places(caches):
    with pytest.raises(ModelResolutionError) as caught:
        resolve_model("org/absent")
    message = str(caught.value)
    assert "hf_home/hub/models--org--absent" in message
    assert ".cache/huggingface/hub/models--org--absent" in message
    assert "hub download skipped (HF_HUB_OFFLINE=1)" in message


def test_random_init_bundle_is_materialized_once_and_flagged(caches):
    first = resolve_model("harness/tiny-random-llama")
    assert first.source == "bundled (materialized now)" and first.random_init
    assert read_marker(first.path)["random_init"] is True
    second = resolve_model("harness/tiny-random-llama")
    assert second.path == first.path and second.source == "hf_home"


def test_random_init_is_seeded(tmp_path):
    bundle = RandomInitBundle(config=TINY_RANDOM_LLAMA_CONFIG, dtype="float32")
    bundle.materialize(tmp_path / "a")
    bundle.materialize(tmp_path / "b")
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()


@pytest.fixture
def served_repo(tmp_path):
    """A tiny model repository as the hub holds it, with a pickle that must never be fetched."""
    repo = tmp_path / "served"
    RandomInitBundle(config=TINY_RANDOM_LLAMA_CONFIG, dtype="float32").materialize(repo)
    (repo / "harness_snapshot.json").unlink()
    (repo / "pytorch_model.bin").write_bytes(b"pickle bytes that must not be downloaded")
    return repo


DOWNLOAD_SCRIPT = """
import json, sys, torch
from harness.loading import load_model, load_tokenizer
from harness.resolve import resolve_model
resolved = resolve_model("tiny-org/tiny-llama")
model, tokenizer = load_model(resolved.path), load_tokenizer(resolved.path)
logits = model(**tokenizer("hello", return_tensors="pt")).logits
print(json.dumps({"path": str(resolved.path), "source": resolved.source,
                  "finite": bool(torch.isfinite(logits).all())}))
"""


def run_resolution(env):
    # huggingface_hub reads HF_ENDPOINT and HF_HUB_OFFLINE once, at import: a fresh process is the
    # only honest way to point it at the loopback hub, exactly as a user's shell would.
    done = subprocess.run([sys.executable, "-c", DOWNLOAD_SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_download_from_a_loopback_hub_then_cache(caches, served_repo):
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    with FakeHub({"tiny-org/tiny-llama": served_repo}) as hub:
        first = run_resolution(dict(env, HF_ENDPOINT=hub.url))
        requested = list(hub.requests)
    assert first["source"] == "download" and first["finite"]
    snapshot = caches / "hf_home" / "hub" / "models--tiny-org--tiny-llama" / "snapshots" / COMMIT
    assert first["path"] == str(snapshot)
    assert not (snapshot / "pytorch_model.bin").exists()
    assert not any("pytorch_model.bin" in path for path in requested)
    # The server is stopped: the second resolution must be served from the cache.
    second = run_resolution(dict(env, HF_ENDPOINT=hub.url))
    assert (second["path"], second["source"]) == (str(snapshot), "hf_home")


def test_unreachable_hub_is_a_one_line_error_from_the_cli(caches):
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env["HF_ENDPOINT"] = "http://127.0.0.1:9"  # the discard port: connection refused at once
    done = subprocess.run(
        [sys.executable, "-m", "harness", "fetch", "org/absent"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: org/absent: not found; searched ")
    assert "hub download failed" in lines[0]


def test_download_patterns_never_include_pickles():
    assert not any(p.endswith((".bin", ".pt", ".pth", ".ckpt")) for p in DOWNLOAD_PATTERNS)


MATERIALIZE = """
import json, sys
from harness.resolve import resolve_model
resolved = resolve_model("harness/tiny-random-llama")
print(json.dumps({"path": str(resolved.path), "source": resolved.source}))
"""


def test_concurrent_materialization_writes_one_complete_snapshot(caches):
    """Several processes (pytest-xdist workers, parallel CI jobs) resolving a bundled model at once:
    the file lock lets one write it and the others read the finished snapshot."""
    env = dict(os.environ)
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", MATERIALIZE], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    results = []
    for worker in workers:
        out, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err[-2000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    paths = {r["path"] for r in results}
    assert len(paths) == 1
    sources = sorted(r["source"] for r in results)
    assert sources.count("bundled (materialized now)") == 1, sources
    snapshots = caches / "hf_home" / "hub" / "models--harness--tiny-random-llama" / "snapshots"
    assert [p.name for p in snapshots.iterdir()] == ["harness-random-init-seed0-sorted-bytes"]
    assert read_marker(snapshots / "harness-random-init-seed0-sorted-bytes")["random_init"] is True
