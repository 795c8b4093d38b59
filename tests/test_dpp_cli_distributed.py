"""``dpp-select --distributed`` on 2 gloo ranks with a tiny saved Llama model.

Each rank reads and embeds only its share of the files; rank 0 writes the rows that one process
selects from the shards' embeddings, a second run comes from the per-shard cache, and a malformed
line in rank 1's share stops both ranks with the same message.
"""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

import dpp_select.cli as cli
import dpp_select.cli.command as command
from dpp_select import embed_texts, select

from helpers.dpp_cli_files import POOL, TARGET, write_jsonl_rows, write_model_and_files
from helpers.gloo_workers import run_workers

pytestmark = pytest.mark.distributed

WORLD = 2
POOL_SHARDS, TARGET_SHARDS = [(0, 3), (3, 6)], [(0, 1), (1, 2)]


def _argv(root, out, pool="pool.jsonl"):
    return [
        "--pool",
        str(root / pool),
        "--target",
        str(root / "target.jsonl"),
        "--model",
        str(root / "model"),
        "--out",
        str(out),
        "--cache-dir",
        str(root / "cache"),
        "--no-progress",
        "--k",
        "4",
        "--distributed",
    ]


def _exit_message(argv) -> str:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exc:
        cli.main(argv)
    return f"{exc.value.code} {err.getvalue()}"


def worker(rank: int, world: int, out, root) -> None:
    import torch.distributed as dist

    assert cli.main(_argv(root, out / "first.jsonl")) == 0
    assert cli.main(_argv(root, out / "lazy.jsonl") + ["--lazy"]) == 0
    model = AutoModel.from_pretrained(root / "model")
    tok = AutoTokenizer.from_pretrained(root / "model")
    share = embed_texts(
        [r["prompt"] for r in POOL], model, tok, progress=False, process_group=dist.group.WORLD
    )
    texts = [r["prompt"] for r in POOL]
    texts[4] = ""
    try:
        embed_texts(texts, model, tok, progress=False, process_group=dist.group.WORLD)
        empty_share = "no error"
    except ValueError as err:
        empty_share = str(err)

    def no_embedding(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    empty = _exit_message(_argv(root, out / "empty.jsonl", pool="empty_pool.jsonl"))
    command.embed_texts = no_embedding
    assert cli.main(_argv(root, out / "second.jsonl")) == 0
    # Output rows keep a field that is not embedded (and drop the embedded one).
    assert cli.main(_argv(root, out / "kept.jsonl") + ["--keep-fields", "safe"]) == 0
    message = _exit_message(_argv(root, out / "bad.jsonl", pool="bad_pool.jsonl"))
    torch.save(
        {
            "bad": message,
            "empty": empty,
            "empty_share": empty_share,
            "share": torch.from_numpy(share),
        },
        out / f"rank{rank}.pt",
    )


@pytest.fixture(scope="module")
def sharded_cli(tmp_path_factory):
    root = write_model_and_files(tmp_path_factory.mktemp("cli_dist"))
    lines = [json.dumps(r) for r in POOL]
    lines[4] = '{"prompt": '  # rank 1's share
    (root / "bad_pool.jsonl").write_text("\n".join(lines) + "\n")
    empty = [dict(r) for r in POOL]
    empty[4]["prompt"] = ""  # rank 1's share [3, 6): its local row 1
    write_jsonl_rows(root / "empty_pool.jsonl", empty)
    out = run_workers(worker, WORLD, tmp_path_factory.mktemp("cli_out"), root)
    return root, out


def test_rank0_writes_what_one_process_selects_from_the_shards(sharded_cli):
    root, out = sharded_cli
    model = AutoModel.from_pretrained(root / "model")
    tok = AutoTokenizer.from_pretrained(root / "model")

    def embed(rows, shards):
        return np.concatenate(
            [
                embed_texts([r["prompt"] for r in rows[lo:hi]], model, tok, progress=False)
                for lo, hi in shards
            ]
        )

    expected = select(embed(POOL, POOL_SHARDS), embed(TARGET, TARGET_SHARDS), k=4)
    indices = np.load(out / "first.indices.npy", allow_pickle=False)
    np.testing.assert_array_equal(indices, expected.indices)
    rows = [json.loads(line) for line in (out / "first.jsonl").read_text().splitlines()]
    assert rows == [POOL[i] for i in indices]
    assert len(list((root / "cache").glob("emb-*.npy"))) == 2 * WORLD  # pool + target per rank


def test_embed_texts_embeds_this_ranks_share(sharded_cli):
    root, out = sharded_cli
    model = AutoModel.from_pretrained(root / "model")
    tok = AutoTokenizer.from_pretrained(root / "model")
    shares = [
        torch.load(out / f"rank{r}.pt", weights_only=True)["share"].numpy() for r in range(WORLD)
    ]
    for (lo, hi), share in zip(POOL_SHARDS, shares):
        expected = embed_texts([r["prompt"] for r in POOL[lo:hi]], model, tok, progress=False)
        np.testing.assert_array_equal(share, expected)


def test_second_run_reads_every_shard_from_the_cache(sharded_cli):
    _, out = sharded_cli
    np.testing.assert_array_equal(
        np.load(out / "second.indices.npy"), np.load(out / "first.indices.npy")
    )


def test_bad_line_in_one_share_stops_every_rank(sharded_cli):
    _, out = sharded_cli
    for rank in range(WORLD):
        message = torch.load(out / f"rank{rank}.pt", weights_only=True)["bad"]
        assert message.startswith("2 ")
        assert "rank 1 rejected its input" in message and "bad_pool.jsonl:5" in message
    assert not (out / "bad.jsonl").exists()


def test_empty_text_in_one_share_is_named_by_its_row_in_the_file(sharded_cli):
    _, out = sharded_cli
    for rank in range(WORLD):
        message = torch.load(out / f"rank{rank}.pt", weights_only=True)["empty"]
        assert message.startswith("2 ") and "rank 1 rejected its input" in message
        assert "empty_pool.jsonl" in message and "[4]" in message and "[1]" not in message
    assert not (out / "empty.jsonl").exists()


def test_embed_texts_names_an_empty_text_by_its_index_in_the_whole_list(sharded_cli):
    _, out = sharded_cli
    messages = [
        torch.load(out / f"rank{r}.pt", weights_only=True)["empty_share"] for r in range(WORLD)
    ]
    assert messages[0] == "no error"
    assert messages[1].startswith("texts [4] produce no tokens")


def test_keep_fields_need_not_include_the_embedded_fields(sharded_cli):
    _, out = sharded_cli
    indices = np.load(out / "kept.indices.npy")
    np.testing.assert_array_equal(indices, np.load(out / "first.indices.npy"))
    rows = [json.loads(line) for line in (out / "kept.jsonl").read_text().splitlines()]
    assert rows == [{"safe": POOL[i]["safe"]} for i in indices]


def test_lazy_selects_what_the_one_process_command_selects(sharded_cli, tmp_path):
    """--lazy with --distributed: the sharded lazy greedy picks what the full pass picks on the
    shards, and what the one-process command picks (with and without --lazy) on the same
    files (the embeddings come from its own run, without the shards' cache)."""
    root, out = sharded_cli
    indices = np.load(out / "lazy.indices.npy", allow_pickle=False)
    np.testing.assert_array_equal(indices, np.load(out / "first.indices.npy"))
    rows = [json.loads(line) for line in (out / "lazy.jsonl").read_text().splitlines()]
    assert rows == [POOL[i] for i in indices]
    argv = _argv(root, tmp_path / "one.jsonl")
    argv = argv[: argv.index("--cache-dir")] + [
        "--cache-dir",
        str(tmp_path),
        "--no-progress",
        "--k",
        "4",
    ]
    for extra in ([], ["--lazy"]):
        assert cli.main(argv + extra) == 0
        np.testing.assert_array_equal(np.load(tmp_path / "one.indices.npy"), indices)
