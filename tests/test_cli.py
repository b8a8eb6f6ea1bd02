"""The engine CLI, as DESIGN.md specifies it, run as a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile

from .conftest import noise


@pytest.fixture(scope="module")
def wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "noise.wav"
    soundfile.write(str(path), noise(4.0, seed=3), 16_000, subtype="PCM_16")
    return path


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "engine.transcribe", *args], capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("mode", [[], ["--offline"]])
def test_jsonl_output(wav: Path, tiny_dir: Path, mode: list[str]) -> None:
    proc = run_cli(str(wav), "--model", str(tiny_dir), "--language", "en", "--chunk-ms", "100", "--jsonl", *mode)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    *words, summary = lines
    assert summary["type"] == "summary" and summary["words"] == len(words)
    assert summary["audio_s"] == pytest.approx(4.0) and summary["compute_s"] > 0
    assert summary["mode"] == ("offline" if mode else "streaming")
    for word in words:
        assert set(word) == {"text", "start", "end", "emitted_at"}
        assert 0 <= word["start"] <= word["end"] <= 4.0 + 1e-6
        assert word["emitted_at"] <= 4.0 + 1e-6
    if not mode:
        assert words, "the random model commits some tokens in streaming mode"


def test_missing_model_is_a_clear_error(wav: Path, tmp_path: Path) -> None:
    proc = run_cli(str(wav), "--model", str(tmp_path / "nowhere"), "--jsonl")
    assert proc.returncode == 2
    assert "cannot load Qwen3-ASR model" in proc.stderr


def test_unreadable_audio_is_a_clear_error(tiny_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio")
    proc = run_cli(str(bad), "--model", str(tiny_dir), "--jsonl")
    assert proc.returncode == 2 and "cannot read audio file" in proc.stderr
