"""Data families and the timed cell of the lazy benchmark (``dpp_scaling.py --sections lazy``).

Each family returns float32 embeddings (N x 384) and relevance q in float64:
  isotropic   Gaussian rows, q uniform in [0.5, 1].
  clustered   50 cluster centres on top of an LLM-like shared mean direction (two "massive
              activation" coordinates), small noise; q uniform in [0.5, 1].
  narrow      LLM-like anisotropy without clusters and every q within 0.84-0.90: nearly all
              candidates stay close to the best, the hard case for lazy evaluation.
  text        real text through an offline encoder (no pretrained model is needed): hashed word
              unigrams and bigrams, sublinear counts, and a fixed Gaussian random projection to
              384 dims. q = max cosine to target texts encoded the same way. The pool is enlarged
              to N by feature dropout: every hashed feature belongs to one of 16 groups (by hash),
              and each synthetic item is a base text with each group kept with probability 3/4
              (at least one), i.e. the text with about a quarter of its words and bigrams removed.
              Since the encoder is linear in the counts, a copy is a sum of its text's group
              embeddings.
"""

from __future__ import annotations

import json
import math
import re
import time
import zlib

import numpy as np

from dpp_select.engine.kernel import MARGIN
from dpp_select.greedy import greedy_dpp_result
from dpp_select.relevance import relevance_scores

DIM = 384
_BUCKETS = 1 << 16
_GROUPS = 16
_WORD = re.compile(r"[a-z0-9']+")


def _gaussian(n: int, d: int, seed: int) -> np.ndarray:
    """Isotropic float32 data generated in place (no float64 temporary)."""
    x = np.empty((n, d), dtype=np.float32)
    rng = np.random.default_rng(seed)
    step = max(1, (1 << 22) // d)
    for lo in range(0, n, step):
        rng.standard_normal(out=x[lo : lo + step], dtype=np.float32)
    return x


def _llm_mean(rng: np.random.Generator, d: int) -> np.ndarray:
    mean = rng.normal(size=d)
    mean[:2] *= 30.0
    return mean * (10.0 / np.linalg.norm(mean))


def isotropic(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    return _gaussian(n, DIM, seed), np.random.default_rng(seed + 1).uniform(0.5, 1.0, n)


def clustered(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    mean = _llm_mean(rng, DIM)
    centres = rng.normal(size=(50, DIM)) * (4.0 / math.sqrt(DIM))
    x = _gaussian(n, DIM, seed + 2)
    label = rng.integers(0, 50, n)
    step = 1 << 16
    for lo in range(0, n, step):
        block = x[lo : lo + step]
        block *= 2.0 / math.sqrt(DIM)
        block += (mean + centres[label[lo : lo + step]]).astype(np.float32)
    return x, rng.uniform(0.5, 1.0, n)


def narrow(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    mean = _llm_mean(rng, DIM).astype(np.float32)
    x = _gaussian(n, DIM, seed + 3)
    step = 1 << 16
    for lo in range(0, n, step):
        x[lo : lo + step] *= 2.0 / math.sqrt(DIM)
        x[lo : lo + step] += mean
    return x, rng.uniform(0.84, 0.90, n)


def read_texts(paths: str, fields: tuple[str, ...]) -> list[str]:
    """Texts from comma-separated JSONL files: the listed fields present in a row, joined."""
    texts = []
    for path in paths.split(","):
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    row = json.loads(line)
                    texts.append(" ".join(str(row[f]) for f in fields if f in row))
    return texts


def _features(text: str) -> dict[int, float]:
    words = _WORD.findall(text.lower())
    counts: dict[int, float] = {}
    for gram in words + [a + " " + b for a, b in zip(words, words[1:])]:
        h = zlib.crc32(gram.encode())
        counts[h] = counts.get(h, 0.0) + 1.0
    return counts


def _projection(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((_BUCKETS, DIM), dtype=np.float32)


def _group_embeddings(texts: list[str], proj: np.ndarray) -> np.ndarray:
    """(len(texts), 16, 384): each text's embedding restricted to each feature group."""
    out = np.zeros((len(texts), _GROUPS, DIM), dtype=np.float32)
    for i, text in enumerate(texts):
        for h, c in _features(text).items():
            out[i, (h >> 20) % _GROUPS] += (1.0 + math.log(c)) * proj[h % _BUCKETS]
    return out


def encode(texts: list[str], seed: int = 0) -> np.ndarray:
    """The offline encoder: hashed unigrams and bigrams, sublinear counts, random projection."""
    return _group_embeddings(texts, _projection(seed)).sum(axis=1)


def text_family(
    n: int, pool_paths: str, target_paths: str | None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, int]:
    """N texts by feature dropout over the pool; q against the targets (uniform if none)."""
    proj = _projection(seed)
    base = _group_embeddings(read_texts(pool_paths, ("prompt", "safe")), proj)
    rng = np.random.default_rng(seed + 1)
    x = np.empty((n, DIM), dtype=np.float32)
    step = 1 << 15
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        idx = np.arange(lo, hi) % base.shape[0]
        keep = (rng.random((hi - lo, _GROUPS)) < 0.75).astype(np.float32)
        if lo < base.shape[0]:  # the first copy of every text is the text itself
            keep[: base.shape[0] - lo] = 1.0
        keep[keep.sum(axis=1) == 0, 0] = 1.0
        x[lo:hi] = np.einsum("ig,igd->id", keep, base[idx])
    zero = np.linalg.norm(x, axis=1) == 0  # texts without a single word
    x[zero, 0] = 1.0
    if target_paths:
        targets = read_texts(target_paths, ("prompt",))
        pick = np.random.default_rng(seed + 2).permutation(len(targets))[:256]
        quality = relevance_scores(x, encode([targets[i] for i in pick], seed))
    else:
        quality = rng.uniform(0.5, 1.0, n)
    return x, quality, base.shape[0]


def gains_within_tie_margin(got: np.ndarray, expected: np.ndarray) -> bool:
    """Whether two runs' gains along the same picks agree within the greedy's tie margin,
    ``MARGIN x max_i L_ii`` (``kernel.py``): the float64 rounding between two orders of
    re-scoring one gain, which the greedy counts as a tie. The first gain is the largest L_ii.
    The lazy and full-pass greedy re-score different candidates at different steps, so their
    gains agree this closely, not necessarily bit for bit."""
    if got.shape != expected.shape:
        return False
    return expected.size == 0 or bool(np.all(np.abs(got - expected) <= MARGIN * expected[0]))


def lazy_cell(family: str, n: int, texts: str | None, targets: str | None) -> dict:
    k, note = 200, ""
    if family == "text":
        x, quality, base = text_family(n, texts, targets)
        note = f"{base:,} texts"
    else:
        x, quality = globals()[family](n)
    q = np.percentile(quality, [5, 95])
    runs = {False: [], True: []}
    for lazy in (True, False, True, False):  # interleaved: load changes hit both alike
        start = time.perf_counter()
        res = greedy_dpp_result(x, k, quality=quality, beta=4.0, jitter=1e-6, lazy=lazy)
        elapsed = time.perf_counter() - start
        runs[lazy].append((elapsed, res))
    full, lazy = min(runs[False], key=lambda r: r[0]), min(runs[True], key=lambda r: r[0])
    return {
        "family": family,
        "n": n,
        "k": k,
        "note": note,
        "q": q,
        "full": full[0],
        "lazy": lazy[0],
        "work": lazy[1].passes / full[1].passes,
        "same": bool(
            np.array_equal(full[1].indices, lazy[1].indices)
            and gains_within_tie_margin(lazy[1].gains, full[1].gains)
        ),
        "resc": (full[1].rescored, lazy[1].rescored),
    }
