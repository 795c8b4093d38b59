"""The dpp-select command on a tiny saved Llama model, SPARD and GSM8K style JSONL files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from transformers import AutoModel, AutoTokenizer

import dpp_select.cli as cli
import dpp_select.cli.command as command
from dpp_select import embed_texts, select

from helpers.dpp_cli_files import POOL, TARGET, write_model_and_files


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_model_and_files(tmp_path_factory.mktemp("cli"))


def _run(files, tmp_path, *extra):
    out = tmp_path / "sel.jsonl"
    argv = [
        "--pool",
        str(files / "pool.jsonl"),
        "--target",
        str(files / "target.jsonl"),
        "--model",
        str(files / "model"),
        "--out",
        str(out),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--no-progress",
        *extra,
    ]
    return cli.main(argv), out


def test_selects_writes_rows_and_indices_and_caches(files, tmp_path, monkeypatch, capsys):
    code, out = _run(files, tmp_path, "--k", "3", "--pool-fields", "prompt,safe")
    assert code == 0
    indices = np.load(tmp_path / "sel.indices.npy", allow_pickle=False)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows == [POOL[i] for i in indices]
    assert "UNSAFE" not in capsys.readouterr().out
    model = AutoModel.from_pretrained(files / "model")
    tok = AutoTokenizer.from_pretrained(files / "model")
    pool_emb = embed_texts(
        [f"{r['prompt']}\n\n{r['safe']}" for r in POOL], model, tok, progress=False
    )
    target_emb = embed_texts([r["prompt"] for r in TARGET], model, tok, progress=False)
    expected = select(pool_emb, target_emb, k=3, beta=4.0, jitter=1e-6)
    np.testing.assert_array_equal(indices, expected.indices)
    assert len(list((tmp_path / "cache").glob("emb-*.npy"))) == 2

    def no_embedding(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(command, "embed_texts", no_embedding)
    code, _ = _run(files, tmp_path, "--k", "3", "--pool-fields", "prompt,safe")
    np.testing.assert_array_equal(np.load(tmp_path / "sel.indices.npy"), indices)
    # A different field choice changes the texts, so it misses the cache.
    with pytest.raises(AssertionError, match="cache"):
        _run(files, tmp_path, "--k", "3")


def test_ratio_and_random_method(files, tmp_path):
    code, out = _run(files, tmp_path, "--ratio", "1.0", "--method", "random", "--seed", "5")
    assert code == 0
    indices = np.load(tmp_path / "sel.indices.npy")
    assert indices.size == 2 and len(set(indices.tolist())) == 2


def _error(files, tmp_path, capsys, *extra):
    with pytest.raises(SystemExit) as exc:
        _run(files, tmp_path, *extra)
    assert exc.value.code == 2
    return capsys.readouterr().err


def test_errors_are_clear(files, tmp_path, capsys):
    assert "refusing to embed the 'unsafe' field" in _error(
        files, tmp_path, capsys, "--k", "2", "--pool-fields", "prompt,unsafe"
    )
    assert "k=7 exceeds the pool size N=6" in _error(files, tmp_path, capsys, "--k", "7")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\n{"prompt": \n')
    err = _error(files, tmp_path, capsys, "--k", "1", "--target", str(bad))
    assert "bad.jsonl:2" in err
    missing = _error(files, tmp_path, capsys, "--k", "1", "--target-fields", "question")
    assert "target.jsonl:1: missing field 'question'" in missing
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert "holds no rows" in _error(files, tmp_path, capsys, "--k", "1", "--pool", str(empty))
    assert "not a local model folder" in _error(
        files, tmp_path, capsys, "--k", "1", "--model", str(tmp_path / "nope")
    )


def test_runs_as_a_module():
    done = subprocess.run(
        [sys.executable, "-m", "dpp_select.cli", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--pool-fields" in done.stdout


def test_a_run_prints_no_load_report_of_the_model(files, tmp_path):
    """The checkpoint is a causal LM; embedding loads it without its LM head, and transformers'
    report listing that head as UNEXPECTED must not appear in a successful run."""
    argv = ["--pool", str(files / "pool.jsonl"), "--target", str(files / "target.jsonl")]
    argv += ["--model", str(files / "model"), "--out", str(tmp_path / "sel.jsonl"), "--k", "2"]
    done = subprocess.run(
        [sys.executable, "-m", "dpp_select.cli", *argv, "--no-cache", "--no-progress"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("selected 2 of 6 pool items")
    output = done.stdout + done.stderr
    assert "UNEXPECTED" not in output and "LOAD REPORT" not in output
    assert "Loading weights" not in output  # --no-progress covers transformers' bar too


def test_weights_missing_from_the_folder_are_named(files, tmp_path, caplog):
    from safetensors.torch import load_file, save_file
    from transformers.utils import logging as hf_logging

    model = tmp_path / "model"
    shutil.copytree(files / "model", model)
    weights = load_file(model / "model.safetensors")
    del weights["model.norm.weight"]
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    verbosity = hf_logging.get_verbosity()
    code, _ = _run(files, tmp_path, "--k", "2", "--model", str(model), "--no-cache")
    assert code == 0
    warned = [r.getMessage() for r in caplog.records if r.name == command.__name__]
    assert len(warned) == 1 and "1 weights are missing" in warned[0]
    assert "(norm.weight)" in warned[0]
    assert hf_logging.get_verbosity() == verbosity  # transformers' logging is left as it was


def _one_line_error(files, tmp_path, capsys, *extra):
    capsys.readouterr()  # drop what earlier runs printed
    err = _error(files, tmp_path, capsys, *extra)
    ours = [line for line in err.splitlines() if line.startswith("dpp-select:")]
    assert len(ours) == 1 and ours[0].startswith("dpp-select: error: ")
    assert err.endswith(ours[0] + "\n") and "Traceback" not in err
    return ours[0]


def _no_embedding(*args, **kwargs):
    raise AssertionError("embedding ran before the arguments were checked")


def test_outputs_that_name_an_input_are_refused_and_the_inputs_survive(files, tmp_path, capsys):
    before = {name: (files / name).read_bytes() for name in ("pool.jsonl", "target.jsonl")}
    alias = tmp_path / "alias.jsonl"
    alias.symlink_to(files / "pool.jsonl")
    cases = [
        (["--out", str(files / "pool.jsonl")], "--out and --pool are the same file"),
        (["--out", str(files / "target.jsonl")], "--out and --target are the same file"),
        (["--out", str(alias)], "--out and --pool are the same file"),
        (
            ["--out", str(tmp_path / "x.jsonl"), "--indices-out", str(tmp_path / "x.jsonl")],
            "--out and --indices-out are the same file",
        ),
        (["--indices-out", str(files / "pool.jsonl")], "--indices-out and --pool"),
    ]
    for extra, message in cases:
        assert message in _one_line_error(files, tmp_path, capsys, "--k", "2", *extra)
    for name, data in before.items():
        assert (files / name).read_bytes() == data


def test_arguments_and_output_locations_are_checked_before_embedding(
    files, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(command, "embed_texts", _no_embedding)
    (tmp_path / "folder").mkdir()
    cases = [
        (["--ratio", "0"], "--ratio must be a positive number"),
        (["--ratio", "nan"], "--ratio must be a positive number"),
        (["--k", "0"], "--k must be a positive integer"),
        (["--k", "7"], "k=7 exceeds the pool size N=6"),
        (["--k", "1", "--beta", "-1"], "--beta must be a finite number >= 0"),
        (["--k", "1", "--jitter=-1e-6"], "--jitter '-1e-6'"),
        (["--k", "1", "--jitter", "lots"], "--jitter 'lots'"),
        (["--k", "1", "--batch-size", "0"], "--batch-size"),
        (["--k", "1", "--device", "warp-drive"], "--device 'warp-drive' is not a torch device"),
        (
            ["--k", "1", "--out", str(tmp_path / "missing" / "o.jsonl")],
            f"folder {tmp_path / 'missing'} does not exist",
        ),
        (["--k", "1", "--out", str(tmp_path / "folder")], "is a folder"),
        (["--k", "1", "--indices-out", str(tmp_path / "missing" / "i.npy")], "--indices-out"),
    ]
    import torch

    if not torch.cuda.is_available():
        cases.append((["--k", "1", "--device", "cuda"], "CUDA is not available"))
    for extra, message in cases:
        assert message in _one_line_error(files, tmp_path, capsys, "--no-cache", *extra)


def test_invalid_utf8_names_the_file_and_line(files, tmp_path, capsys):
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes(b'{"prompt": "fine"}\n{"prompt": "caf\xe9"}\n')
    err = _one_line_error(files, tmp_path, capsys, "--k", "1", "--target", str(bad))
    assert f"{bad}:2: not valid UTF-8 (byte 0xe9 at column 16)" in err


@pytest.mark.parametrize("damage", ["truncate", "empty", "garbage", "nan", "shape"])
def test_a_bad_cache_entry_is_a_miss_with_a_warning(files, tmp_path, caplog, damage):
    code, _ = _run(files, tmp_path, "--k", "3")
    expected = np.load(tmp_path / "sel.indices.npy")
    entries = sorted((tmp_path / "cache").glob("emb-*.npy"))
    assert code == 0 and len(entries) == 2
    victim = entries[0]
    good = np.load(victim)
    if damage == "truncate":
        victim.write_bytes(victim.read_bytes()[:-7])
    elif damage == "empty":
        victim.write_bytes(b"")
    elif damage == "garbage":
        victim.write_bytes(b"not a numpy file at all")
    elif damage == "nan":
        np.save(victim, np.full_like(good, np.nan))
    else:
        np.save(victim, good[:1])
    code, _ = _run(files, tmp_path, "--k", "3")
    assert code == 0
    np.testing.assert_array_equal(np.load(tmp_path / "sel.indices.npy"), expected)
    assert f"embedding cache entry {victim}" in caplog.text and "as a miss" in caplog.text
    np.testing.assert_array_equal(np.load(victim), good)  # replaced by the fresh embeddings


def test_indices_out_is_written_at_exactly_the_reported_path(files, tmp_path, capsys):
    target = tmp_path / "idx.bin"
    code, _ = _run(files, tmp_path, "--k", "2", "--indices-out", str(target))
    assert code == 0
    assert target.is_file() and not (tmp_path / "idx.bin.npy").exists()
    assert f"-> {tmp_path / 'sel.jsonl'}, {target}\n" in capsys.readouterr().out
    assert np.load(target, allow_pickle=False).shape == (2,)


def test_a_failed_write_leaves_the_previous_output_intact(files, tmp_path, capsys, monkeypatch):
    out = tmp_path / "sel.jsonl"
    out.write_text("previous result\n")
    import dpp_select.cli._files as files_module

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files_module.os, "fsync", full_disk)
    err = _one_line_error(files, tmp_path, capsys, "--k", "3")
    assert f"could not write --out {out} and --indices-out" in err and "the disk is full" in err
    assert out.read_text() == "previous result\n"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_the_rows_and_their_indices_are_written_as_a_pair(files, tmp_path, capsys, monkeypatch):
    """A full disk after the JSONL used to leave a new selection beside the old indices, and the
    error did not say that the disk was full."""
    code, out = _run(files, tmp_path, "--k", "2")
    indices = tmp_path / "sel.indices.npy"
    before = (out.read_bytes(), indices.read_bytes())
    assert code == 0

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "save", full_disk)
    err = _one_line_error(files, tmp_path, capsys, "--k", "4")
    assert "no space left on the device (the disk is full); neither file was changed" in err
    assert (out.read_bytes(), indices.read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_keep_fields_chooses_the_output_fields(files, tmp_path, capsys):
    code, out = _run(files, tmp_path, "--k", "2", "--keep-fields", "prompt,safe")
    assert code == 0
    indices = np.load(tmp_path / "sel.indices.npy")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows == [{"prompt": POOL[i]["prompt"], "safe": POOL[i]["safe"]} for i in indices]
    err = _one_line_error(files, tmp_path, capsys, "--k", "2", "--keep-fields", "prompt,source")
    assert "pool.jsonl:1: missing field 'source'" in err


def test_prints_the_selection_diagnostics(files, tmp_path, capsys):
    code, _ = _run(files, tmp_path, "--k", "2")
    assert code == 0
    out = capsys.readouterr().out
    assert "relevance q: min" in out and "weights w = max(q,0)^4:" in out
    assert "picks decided at jitter scale:" in out


def test_the_low_relevance_warning_is_printed_with_advice(files, tmp_path, capsys):
    code, _ = _run(files, tmp_path, "--k", "2", "--beta", "12")  # w = q^12: tiny weights
    assert code == 0
    err = capsys.readouterr().err
    assert "dpp-select: warning: relevance is low" in err and "--jitter relative" in err
    assert err.count("dpp-select: warning:") == 1
    code, _ = _run(files, tmp_path, "--k", "2", "--beta", "12", "--jitter", "relative")
    assert code == 0 and "dpp-select: warning" not in capsys.readouterr().err


def test_lazy_flag_selects_what_the_full_pass_selects(files, tmp_path):
    """(With --distributed too: tests/test_dpp_cli_distributed.py.)"""
    code, _ = _run(files, tmp_path, "--k", "3")
    full = np.load(tmp_path / "sel.indices.npy", allow_pickle=False)
    code_lazy, _ = _run(files, tmp_path, "--k", "3", "--lazy")
    assert code == code_lazy == 0
    np.testing.assert_array_equal(np.load(tmp_path / "sel.indices.npy", allow_pickle=False), full)


def test_version_comes_from_the_installed_distribution(capsys):
    """The helper's checkout fallback is tested with spag_optim's version (test_spag_config)."""
    from importlib.metadata import version

    import dpp_select
    from spard_io import distribution_version

    assert dpp_select.__version__ == version("spard") == distribution_version()
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"dpp-select {version('spard')}\n"


def test_every_option_has_help_text():
    parser = cli.build_parser()
    missing = [
        action.option_strings
        for action in parser._actions
        if action.option_strings and not action.help
    ]
    assert missing == []
    text = parser.format_help()
    for method in ("dpp", "dpp_diversity_only", "random", "top_relevance", "high_relevance"):
        assert method in text.split("--method", 1)[1]


def test_json_errors_name_the_column_and_missing_fields_name_the_option(files, tmp_path, capsys):
    truncated = '{"prompt": "how do i bake bread"'  # the object is never closed
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\n' + truncated + "\n")
    err = _one_line_error(files, tmp_path, capsys, "--k", "1", "--target", str(bad))
    column = len(truncated) + 1  # just after the last character
    assert f"bad.jsonl:2: not valid JSON (Expecting ',' delimiter at column {column})" in err
    crlf = tmp_path / "crlf.jsonl"
    crlf.write_bytes(b'{"prompt": "a"}\r\n{"prompt": "b",\r\n')
    err = _one_line_error(files, tmp_path, capsys, "--k", "1", "--target", str(crlf))
    assert (
        "crlf.jsonl:2: not valid JSON (Expecting property name enclosed in double quotes "
        "at column 16)" in err
    )
    for option, source, field in [
        ("--target-fields", "target", "question"),
        ("--pool-fields", "pool", "question"),
        ("--keep-fields", "pool", "source"),
    ]:
        err = _one_line_error(files, tmp_path, capsys, "--k", "1", option, field)
        assert f"{source}.jsonl:1: missing field '{field}'" in err
        assert f"choose the fields with {option}" in err


def test_the_cache_misses_after_same_size_weights_with_the_old_modification_time(files, tmp_path):
    """The cache was keyed by the model files' names, sizes and mtimes: other weights of the same
    size with a preserved mtime hit the old entries, and the selection differed from --no-cache."""
    import shutil

    from helpers.dpp_tiny_model import tiny_model

    model = tmp_path / "model"
    shutil.copytree(files / "model", model)
    argv = ["--k", "3", "--method", "top_relevance", "--model", str(model)]
    assert _run(files, tmp_path, *argv)[0] == 0
    weights = model / "model.safetensors"
    stat = weights.stat()
    tiny_model(seed=5).save_pretrained(tmp_path / "other")
    shutil.copyfile(tmp_path / "other" / "model.safetensors", weights)
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert weights.stat().st_size == stat.st_size and weights.stat().st_mtime_ns == stat.st_mtime_ns
    assert _run(files, tmp_path, *argv)[0] == 0
    cached = np.load(tmp_path / "sel.indices.npy")
    assert _run(files, tmp_path, *argv, "--no-cache")[0] == 0
    np.testing.assert_array_equal(cached, np.load(tmp_path / "sel.indices.npy"))
    assert len(list((tmp_path / "cache").glob("emb-*.npy"))) == 4  # two entries per model
