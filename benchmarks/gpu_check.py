"""One prepared device check: run it once on a GPU and commit what it writes.

In one process, in <= 5 minutes on one GPU:

1. the CUDA tests (``pytest -m cuda``), in a child process;
2. the full pass's achieved bandwidth at N = 1e6 and 1e7, d = 4096, bfloat16: bytes of
   embeddings read per pick / time per pick (the per-pick time of a k-pick selection less a
   1-pick one, so setup cancels), against the device's peak from ``PEAK_GBPS`` by
   ``torch.cuda.get_device_name()`` or ``--peak-gbps``; the pass alone is timed too;
3. ``lazy=True`` against the full pass at N = 1e6: time ratio, identical picks;
4. SPAG's cost on a randomly initialised ~1B-parameter Llama with LoRA (built from a
   ``LlamaConfig`` in-process): the SPAG step (inner step, safety forward and backward,
   projection) against the utility step (forward, backward, inner step), and SPAG's own
   arithmetic against the inner step plus safety forward and backward done by hand
   (``benchmarks/spag_overhead.py``'s pairing);
5. the picks on a subset of the bfloat16 pool against the exact float64 greedy on the CPU
   (NumPy backend on the stored values).

Writes ``gpu_check.json`` and ``gpu_check.md`` to ``--out-dir`` (benchmarks/results/). ``--smoke``
runs the same code at toy sizes on the CPU (CI) and writes ``gpu_check_smoke.*`` instead, so it
never overwrites device figures. Exits 1 when a CUDA test fails or the picks differ; the
bandwidth is reported against the 70%-of-peak acceptance bound, never tuned to a device.

    python benchmarks/gpu_check.py [--smoke] [--peak-gbps 4800] [--out-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from typing import Any

import numpy as np
import torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from dpp_select.greedy import greedy_dpp_result  # noqa: E402
from spag_overhead import paired_ratio, timed, trainable  # noqa: E402
from spard_io import write_atomic  # noqa: E402

#: Peak memory bandwidth (GB/s, vendor figures) by a substring of the device name; the first
#: match wins, so more specific names come first.
PEAK_GBPS = [
    ("GH200", 4000.0),
    ("H200", 4800.0),
    ("H100 PCIe", 2000.0),
    ("H100 NVL", 3900.0),
    ("H100", 3350.0),
    ("B200", 8000.0),
    ("A100-SXM4-80GB", 2039.0),
    ("A100 80GB PCIe", 1935.0),
    ("A100", 1555.0),
    ("L40S", 864.0),
    ("L4", 300.0),
    ("A10", 600.0),
    ("RTX 4090", 1008.0),
    ("V100", 900.0),
    ("T4", 320.0),
]

#: Each size as (the device check, ``--smoke`` at toy sizes on the CPU), side by side so the
#: smoke run visibly exercises the same code at scaled-down sizes.
SIZES = {
    "sizes": ([1_000_000, 10_000_000], [2_000, 8_000]),
    "d": (4096, 64),
    "k": (16, 8),
    "lazy_n": (1_000_000, 4_000),
    "lazy_k": (64, 24),
    "subset": (20_000, 1_000),
    "subset_k": (30, 20),
    "tests": (["tests"], ["tests/test_dpp_device_pass.py"]),
    "tokens": ((8, 256), (2, 16)),
    "steps": (10, 2),
}
#: ``LlamaConfig`` arguments, (~1B parameters, toy) as above.
LLAMA = {
    "vocab_size": (32000, 2048),
    "hidden_size": (2048, 64),
    "intermediate_size": (5632, 128),
    "num_hidden_layers": (16, 2),
    "num_attention_heads": (16, 4),
    "num_key_value_heads": (16, 4),
}


def run_sizes(smoke: bool) -> dict[str, Any]:
    """The sizes of one run: the device check's, or the smoke run's with ``smoke``."""
    sizes = {key: pair[smoke] for key, pair in SIZES.items()}
    sizes["llama"] = {key: pair[smoke] for key, pair in LLAMA.items()}
    return sizes


def peak_gbps(name: str, override: float | None) -> float | None:
    """The device's peak bandwidth: ``override``, else the table's first match, else None."""
    if override is not None:
        return override
    return next((peak for key, peak in PEAK_GBPS if key in name), None)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bf16_pool(n: int, d: int, device: torch.device, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """Gaussian embeddings stored in bfloat16, generated on the device block by block, and
    relevance in [0.5, 1)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    x = torch.empty((n, d), dtype=torch.bfloat16, device=device)
    block = max(1, (1 << 26) // d)
    for lo in range(0, n, block):
        hi = min(n, lo + block)
        x[lo:hi] = torch.randn((hi - lo, d), generator=gen, device=device)
    quality = np.random.default_rng(seed).uniform(0.5, 1.0, n)
    return x, quality


def timed_selection(
    x: torch.Tensor, quality: np.ndarray, k: int, lazy: bool = False
) -> tuple[float, Any]:
    """Seconds of one selection (device synchronised) and its result."""
    sync(x.device)
    start = time.perf_counter()
    res = greedy_dpp_result(
        x, k, quality=quality, beta=4.0, jitter=1e-6, backend="torch", lazy=lazy
    )
    sync(x.device)
    return time.perf_counter() - start, res


def bandwidth(n: int, d: int, k: int, device: torch.device, peak: float | None) -> dict:
    """Bytes of embeddings read per pick / seconds per pick, with setup cancelled."""
    from dpp_select._inputs import row_norms
    from dpp_select.engine.backends import TorchPass

    x, quality = bf16_pool(n, d, device, seed=1)
    timed_selection(x, quality, 2)  # warm-up: kernels, allocator
    t_k, res = timed_selection(x, quality, k)
    t_1, _ = timed_selection(x, quality, 1)
    per_pick = (t_k - t_1) / (k - 1)
    xpass = TorchPass(x, row_norms(x))
    a = np.random.default_rng(2).normal(size=d) / np.sqrt(d)
    xpass.project_device(a)
    sync(device)
    start = time.perf_counter()
    for _ in range(5):
        xpass.project_device(a)
    sync(device)
    per_pass = (time.perf_counter() - start) / 5
    read = x.numel() * x.element_size()
    row = {
        "n": n,
        "d": d,
        "k": k,
        "bytes_per_pick": read,
        "seconds_per_pick": per_pick,
        "gbps_pick": read / per_pick / 1e9,
        "seconds_per_pass": per_pass,
        "gbps_pass": read / per_pass / 1e9,
        "rescored": res.rescored,
    }
    row["fraction_of_peak"] = None if peak is None else row["gbps_pick"] / peak
    del x, xpass
    return row


def lazy_vs_full(n: int, d: int, k: int, device: torch.device) -> dict:
    x, quality = bf16_pool(n, d, device, seed=3)
    timed_selection(x, quality, 2)
    t_full, full = timed_selection(x, quality, k)
    t_lazy, lazy = timed_selection(x, quality, k, lazy=True)
    return {
        "n": n,
        "d": d,
        "k": k,
        "full_seconds": t_full,
        "lazy_seconds": t_lazy,
        "lazy_over_full": t_lazy / t_full,
        "lazy_work": lazy.passes / k,
        "same_picks": bool(np.array_equal(full.indices, lazy.indices)),
    }


def reference_subset(n: int, d: int, k: int, device: torch.device) -> dict:
    """The device's picks on an n-row bfloat16 pool against the exact float64 greedy (NumPy
    backend on the stored values, on the CPU)."""
    x, quality = bf16_pool(n, d, device, seed=4)
    _, on_device = timed_selection(x, quality, k)
    stored = x.to(torch.float64).cpu().numpy()
    exact = greedy_dpp_result(stored, k, quality=quality, beta=4.0, jitter=1e-6, backend="numpy")
    return {"n": n, "d": d, "k": k, "equal": bool(np.array_equal(on_device.indices, exact.indices))}


def spag_cost(llama: dict, tokens: tuple[int, int], steps: int, device: torch.device) -> dict:
    """The SPAG step against the utility step and against inner step + safety forward/backward
    by hand, on a randomly initialised Llama with LoRA (r = 32)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from spag_optim import SPAGOptimizer

    torch.manual_seed(0)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = LlamaForCausalLM(LlamaConfig(max_position_embeddings=max(128, tokens[1]), **llama))
    params = sum(p.numel() for p in model.parameters())
    model = trainable(model.to(device=device, dtype=dtype), "LoRA")
    gen = torch.Generator().manual_seed(0)
    util, safe = (
        {"input_ids": ids, "labels": ids}
        for ids in (
            torch.randint(0, llama["vocab_size"], tokens, generator=gen).to(device)
            for _ in range(2)
        )
    )
    inner = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    opt = SPAGOptimizer(inner, lambda: model(**safe).loss, tau=0.0)  # tau 0: always project

    def utility_step():
        model(**util).loss.backward()
        inner.step()
        inner.zero_grad(set_to_none=False)

    def by_hand():  # the work any projection needs: inner step, safety forward + backward
        inner.step()
        loss = model(**safe).loss
        inner.zero_grad(set_to_none=False)
        loss.backward()

    model(**util).loss.backward()
    t_base, t_spag, ratio = paired_ratio(by_hand, opt.step, device, steps)
    t_util = float(np.median([timed(utility_step, device) for _ in range(steps)]))
    return {
        "parameters": params,
        "tokens": list(tokens),
        "utility_step": t_util,
        "by_hand": t_base,
        "spag_step": t_spag,
        "spag_over_utility": t_spag / t_util,
        "spag_own_overhead": ratio - 1.0,
        "projections": int(opt.num_projections),
    }


def cuda_tests(paths: list[str]) -> dict:
    """``pytest -m cuda`` on ``paths`` in a child process: exit status and summary line."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda", *paths],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    # Exit 5: every test deselected or skipped away (no CUDA test collected): not a failure.
    return {
        "returncode": done.returncode,
        "summary": lines[-1] if lines else "",
        "passed": done.returncode in (0, 5),
    }


def markdown(report: dict) -> list[str]:
    peak = report["peak_gbps"]
    lines = [
        f"# Device check: {report['device']}",
        "",
        f"Finished {report['finished']}; torch {report['torch']}; peak bandwidth "
        f"{'unknown (pass --peak-gbps)' if peak is None else f'{peak:.0f} GB/s'}; "
        f"{'smoke run (toy sizes, CPU)' if report['smoke'] else 'full run'}; "
        f"`python benchmarks/gpu_check.py{' --smoke' if report['smoke'] else ''}`.",
        "",
        f"CUDA tests: {report['cuda_tests']['summary']} (exit "
        f"{report['cuda_tests']['returncode']}).",
        "",
        "| N | d | pick: ms | pick: GB/s | of peak | pass alone: ms | pass: GB/s | re-scored |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["bandwidth"]:
        share = "-" if r["fraction_of_peak"] is None else f"{r['fraction_of_peak']:.0%}"
        lines.append(
            f"| {r['n']:,} | {r['d']} | {r['seconds_per_pick'] * 1e3:.2f} | "
            f"{r['gbps_pick']:.3g} | {share} | {r['seconds_per_pass'] * 1e3:.2f} | "
            f"{r['gbps_pass']:.3g} | {r['rescored']} |"
        )
    lz, sp, ref = report["lazy"], report["spag"], report["reference"]
    lines += [
        "",
        f"Bytes per pick: the bfloat16 embeddings read once (N d 2). Acceptance "
        f"bound: >= 70% of peak at the largest N: {report['bandwidth_verdict']}.",
        "",
        f"Lazy vs full (N = {lz['n']:,}, d = {lz['d']}, k = {lz['k']}): lazy "
        f"{lz['lazy_seconds']:.2f} s, full {lz['full_seconds']:.2f} s (ratio "
        f"{lz['lazy_over_full']:.2f}, work {lz['lazy_work']:.2f} passes per pick), same "
        f"picks: {lz['same_picks']}.",
        "",
        f"SPAG ({sp['parameters'] / 1e6:,.0f}M-parameter Llama, LoRA r = 32, "
        f"{sp['tokens'][0]}x{sp['tokens'][1]} tokens): utility step "
        f"{sp['utility_step'] * 1e3:.1f} ms, SPAG step {sp['spag_step'] * 1e3:.1f} ms "
        f"({sp['spag_over_utility']:.2f}x the utility step); SPAG's own arithmetic "
        f"{sp['spag_own_overhead']:+.1%} over inner step + safety forward/backward by hand.",
        "",
        f"Picks on a {ref['n']:,}-row bfloat16 subset (k = {ref['k']}) equal to the "
        f"CPU float64 greedy: {ref['equal']}.",
    ]
    return lines


def run(args: argparse.Namespace) -> dict:
    sizes = run_sizes(args.smoke)
    device = torch.device("cpu" if args.smoke else "cuda")
    if args.smoke:
        torch.set_num_threads(1)  # CI machines are shared: threads waiting on busy cores
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device; run with --smoke for the CPU check")
    name = "CPU" if args.smoke else torch.cuda.get_device_name(device)
    peak = peak_gbps(name, args.peak_gbps)
    report = {
        "device": name,
        "smoke": args.smoke,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "peak_gbps": peak,
        "cuda_tests": cuda_tests(sizes["tests"]),
    }
    report["bandwidth"] = [
        bandwidth(n, sizes["d"], sizes["k"], device, peak) for n in sizes["sizes"]
    ]
    largest = report["bandwidth"][-1]["fraction_of_peak"]
    report["bandwidth_verdict"] = (
        "no peak known"
        if largest is None
        else f"{'met' if largest >= 0.7 else 'NOT met'} ({largest:.0%})"
    )
    report["lazy"] = lazy_vs_full(sizes["lazy_n"], sizes["d"], sizes["lazy_k"], device)
    report["spag"] = spag_cost(sizes["llama"], sizes["tokens"], sizes["steps"], device)
    report["reference"] = reference_subset(sizes["subset"], sizes["d"], sizes["subset_k"], device)
    report["finished"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="toy sizes on the CPU (CI)")
    parser.add_argument(
        "--peak-gbps",
        type=float,
        default=None,
        help="the device's peak memory bandwidth in GB/s (else from the table)",
    )
    parser.add_argument("--out-dir", default=os.path.join(ROOT, "benchmarks", "results"))
    args = parser.parse_args(argv)
    report = run(args)
    stem = os.path.join(args.out_dir, "gpu_check_smoke" if args.smoke else "gpu_check")
    os.makedirs(args.out_dir, exist_ok=True)
    for path, text in (
        (f"{stem}.json", json.dumps(report, indent=2)),
        (f"{stem}.md", "\n".join(markdown(report))),
    ):
        write_atomic(path, lambda handle, text=text: handle.write(f"{text}\n".encode()))
    print("\n".join(markdown(report)))
    ok = report["cuda_tests"]["passed"] and report["reference"]["equal"]
    ok = ok and report["lazy"]["same_picks"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
