"""``vlmtune checkpoint``: inspect, refuse to overwrite, and never leave a half-written OUT."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from tests.fixtures.official import write_official

from vlmtune.cli import main


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    return write_official(tmp_path_factory.mktemp("cli") / "InternVL2-tiny", kv_heads=2)


def test_inspect_says_what_an_official_dir_is(official, capsys):
    assert main(["checkpoint", "inspect", str(official), "--json"]) == 0
    desc = json.loads(capsys.readouterr().out)
    assert desc["layout"] == "official" and desc["llm"] == "InternLM2ForCausalLM"
    assert desc["shards"] == 2 and desc["dtype"] == "float32"
    assert desc["tokenizer"] == "sentencepiece (InternLM2Tokenizer with remote code)"
    assert desc["convert_with"] == f"vlmtune checkpoint to-hf {official} OUT"


def test_existing_out_is_refused_without_force(official, tmp_path, capsys):
    out = tmp_path / "hf"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["checkpoint", "to-hf", str(official), str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"
    assert main(["checkpoint", "to-hf", str(official), str(out), "--force"]) == 0
    assert not (out / "keep.txt").exists() and (out / "config.json").exists()
    capsys.readouterr()
    assert main(["checkpoint", "inspect", str(out), "--json"]) == 0
    desc = json.loads(capsys.readouterr().out)
    assert (desc["layout"], desc["family"], desc["llm"]) == ("hf-native", "internvl", "llama")
    assert desc["tokenizer"].startswith("fast") and desc["convert_with"] is None


def test_killed_conversion_leaves_no_out_and_a_rerun_completes(official, tmp_path):
    out = tmp_path / "hf"
    cmd = [sys.executable, "-m", "vlmtune.cli", "checkpoint", "to-hf", str(official), str(out),
           "--max-shard-size", "20KB"]
    env = dict(os.environ, VLMTUNE_CONVERT_SHARD_SLEEP="0.5")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tmp = tmp_path / "hf.tmp"
    deadline = time.monotonic() + 60
    while not list(tmp.glob("part-*.safetensors")) and time.monotonic() < deadline:
        assert proc.poll() is None, "the conversion ended before it could be killed"
        time.sleep(0.05)
    assert list(tmp.glob("part-*.safetensors")), "no shard written within 60 s"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    assert main(["checkpoint", "to-hf", str(official), str(out)]) == 0  # the stale tmp goes
    assert (out / "config.json").exists() and not tmp.exists()
    assert json.loads((out / "config.json").read_text())["model_type"] == "internvl"


def test_merge_into_an_official_base_names_the_converter(official, tmp_path, capsys):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    assert main(["checkpoint", "merge", str(official), str(adapter), str(tmp_path / "o")]) == 2
    assert f"vlmtune checkpoint to-hf {official} OUT" in capsys.readouterr().err


def test_to_hf_of_a_native_dir_names_the_way_back(official, tmp_path, capsys):
    native = tmp_path / "native"
    assert main(["checkpoint", "to-hf", str(official), str(native)]) == 0
    assert main(["checkpoint", "to-hf", str(native), str(tmp_path / "again")]) == 2
    assert f"vlmtune checkpoint to-official {native} OUT --like BASE" in capsys.readouterr().err
    assert not (tmp_path / "again").exists()
