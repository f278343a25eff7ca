"""`factory-copilot models pull|list` against a local server speaking the hub's endpoints (HF_ENDPOINT), serving the tiny GGUF."""

from __future__ import annotations

import hashlib

import pytest

from factory_copilot.cli import main
from factory_copilot.copilot.model_files import (
    Machine,
    default_size,
    local_default,
    manifest_for,
    read_manifest,
)
from factory_copilot.plumbing.broker import free_port
from tests.support.copilot import make_tiny_qwen
from tests.support.hub import COMMIT, FakeHub

REPO = "Qwen/Qwen2.5-0.5B-Instruct-GGUF"
FILE = "qwen2.5-0.5b-instruct-q4_k_m.gguf"


@pytest.fixture(scope="module")
def gguf(tmp_path_factory):
    return make_tiny_qwen(tmp_path_factory.mktemp("tiny") / "tiny.gguf")


@pytest.fixture
def models(tmp_path, monkeypatch):
    folder = tmp_path / "models"
    monkeypatch.setenv("FACTORY_COPILOT_MODELS", str(folder))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    return folder


def serve(monkeypatch, gguf, **kw) -> FakeHub:
    hub = FakeHub(REPO, {FILE: gguf}, **kw)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    return hub


def test_a_good_file_is_pulled_verified_and_recorded(models, gguf, monkeypatch, capsys):
    hub = serve(monkeypatch, gguf)
    try:
        assert main(["models", "pull", "0.5b", "--quiet"]) == 0
    finally:
        hub.stop()
    path = models / FILE
    sha = hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert path.read_bytes() == gguf.read_bytes()
    entry = read_manifest(models)[FILE]
    assert (entry.repo, entry.revision, entry.sha256, entry.size) == (REPO, COMMIT, sha, gguf.stat().st_size)
    assert manifest_for(path)["sha256"] == sha and local_default(models) == path
    out = capsys.readouterr().out
    assert f"sha256 {sha} (verified against the hub)" in out and f"{REPO}@{COMMIT}" in out
    # every byte came at the one commit the pull resolved first
    assert any(p.startswith(f"/api/models/{REPO}") for _, p, _ in hub.requests)
    assert all(f"/resolve/{COMMIT}/" in p for m, p, _ in hub.requests if "/resolve/" in p)
    # a second pull finds it verified and fetches nothing
    hub2 = serve(monkeypatch, gguf)
    try:
        assert main(["models", "pull", "0.5b", "--quiet"]) == 0
        assert not [r for r in hub2.requests if "/resolve/" in r[1]]
    finally:
        hub2.stop()
    assert main(["models", "list"]) == 0
    assert f"{FILE}: " in capsys.readouterr().out


def test_a_wrong_checksum_is_refused_and_the_file_removed(models, gguf, monkeypatch, capsys):
    hub = serve(monkeypatch, gguf, wrong_sha=True)
    try:
        assert main(["models", "pull", "0.5b", "--quiet"]) == 1
    finally:
        hub.stop()
    err = capsys.readouterr().err
    assert "does not match the hub's" in err and "file refused and removed" in err and "Traceback" not in err
    assert not (models / FILE).exists() and read_manifest(models) == {}


def test_an_interrupted_transfer_resumes(models, gguf, monkeypatch):
    from huggingface_hub import constants

    # the real chunk (10 MB) is small beside a 1 GB model; beside the tiny file, a small one plays its part
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 16 * 1024)
    cut = gguf.stat().st_size // 3
    hub = serve(monkeypatch, gguf, cut_after=cut)
    try:
        assert main(["models", "pull", "0.5b", "--quiet"]) == 0
    finally:
        hub.stop()
    assert (models / FILE).read_bytes() == gguf.read_bytes()
    gets = [r for r in hub.requests if r[0] == "GET" and "/resolve/" in r[1]]
    assert len(gets) >= 2 and gets[-1][2] is not None and gets[-1][2].startswith("bytes=")  # went on with a Range
    assert int(gets[-1][2][6:].split("-")[0]) > 0


def test_no_network_is_one_clear_line(models, monkeypatch, capsys):
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    assert main(["models", "pull", "0.5b", "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("models pull: cannot pull Qwen/Qwen2.5-0.5B-Instruct-GGUF/") and "cannot reach" in err
    assert len(err.splitlines()) == 1 and "runbooks" in err
    assert not models.exists() or not any(models.glob("*.gguf"))


def test_the_default_model_follows_the_machine():
    assert default_size(Machine(2, 24, None)) == "0.5b"
    assert default_size(Machine(8, 16, None)) == "1.5b"
    assert default_size(Machine(8, 3, None)) == "0.5b"
    assert default_size(Machine(8, 32, "NVIDIA")) == "3b"


def test_the_demo_offline_says_one_line_and_runs_runbook_only(models, monkeypatch, capsys):
    from argparse import Namespace

    from simulators.demo import demo_model

    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    args = Namespace(model=None, no_model=False, openai_url=None, headless=True)
    assert demo_model(args) is None
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("No copilot model: cannot pull") and out[-1].endswith("from the runbooks.")
    assert demo_model(Namespace(model=None, no_model=True, openai_url=None, headless=True)) is None
    assert capsys.readouterr().out == ""  # --no-model: not even an attempt


def test_the_demo_uses_a_model_pulled_before_without_the_network(models, gguf, monkeypatch, capsys):
    from argparse import Namespace

    from simulators.demo import demo_model

    hub = serve(monkeypatch, gguf)
    try:
        assert main(["models", "pull", "0.5b", "--quiet"]) == 0
    finally:
        hub.stop()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")  # offline now
    assert demo_model(Namespace(model=None, no_model=False, openai_url=None, headless=True)) == str(models / FILE)
