"""The dpp-select command on a tiny saved Llama model, SPARD and GSM8K style JSONL files."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from transformers import AutoModel, AutoTokenizer

import dpp_select.cli as cli
from dpp_select import embed_texts, select

from dpp_tiny_model import tiny_model, tiny_tokenizer

POOL = [
    {"prompt": "how do i bake bread", "safe": "help", "unsafe": "UNSAFE-0"},
    {"prompt": "what is two plus three", "safe": "five", "unsafe": "UNSAFE-1"},
    {"prompt": "make a cake please", "safe": "refuse", "unsafe": "UNSAFE-2"},
    {"prompt": "the question is math", "safe": "answer", "unsafe": "UNSAFE-3"},
    {"prompt": "help", "safe": "safe answer", "unsafe": "UNSAFE-4"},
    {"prompt": "what is the safe answer", "safe": "refuse", "unsafe": "UNSAFE-5"},
]
TARGET = [{"prompt": "what is two plus two", "answer": "four"},
          {"prompt": "three plus five equals what", "answer": "eight"}]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    model_dir = root / "model"
    tiny_model().save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    for name, rows in [("pool.jsonl", POOL), ("target.jsonl", TARGET)]:
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _run(files, tmp_path, *extra):
    out = tmp_path / "sel.jsonl"
    argv = ["--pool", str(files / "pool.jsonl"), "--target", str(files / "target.jsonl"),
            "--model", str(files / "model"), "--out", str(out), "--cache-dir",
            str(tmp_path / "cache"), "--no-progress", *extra]
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
    pool_emb = embed_texts([f"{r['prompt']}\n\n{r['safe']}" for r in POOL], model, tok,
                           progress=False)
    target_emb = embed_texts([r["prompt"] for r in TARGET], model, tok, progress=False)
    expected = select(pool_emb, target_emb, k=3, beta=4.0, jitter=1e-6)
    np.testing.assert_array_equal(indices, expected.indices)
    assert len(list((tmp_path / "cache").glob("emb-*.npy"))) == 2

    def no_embedding(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(cli, "embed_texts", no_embedding)
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
        files, tmp_path, capsys, "--k", "2", "--pool-fields", "prompt,unsafe")
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
    assert "not a local model folder" in _error(files, tmp_path, capsys, "--k", "1", "--model",
                                                 str(tmp_path / "nope"))


def test_runs_as_a_module():
    done = subprocess.run([sys.executable, "-m", "dpp_select.cli", "--help"], capture_output=True,
                          text=True, check=True)
    assert "--pool-fields" in done.stdout
