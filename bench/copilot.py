"""Benchmark the copilot's model path: Qwen2.5-0.5B/1.5B-shaped Q4_K_M GGUFs (random weights) on the CPU.

For each model: prompt tokens of a typical evidence pack (fixed prefix + per-alarm data),
prompt processing and generation speed, time to first token and to a complete diagnosis
(prompt + ``--gen-tokens`` tokens under the JSON-schema grammar), cold (new model, nothing
cached) and warm (a second alarm: the fixed prefix is reused from llama.cpp's KV cache),
and the forward pass's speed against the memory-bandwidth limit (every weight is read once per
token: model bytes per token vs. the read bandwidth numpy measures in the same run).

    python bench/copilot.py [--sizes 0.5b 1.5b] [--threads 2] [--gen-tokens 150]

The weights are random, so the text is noise and the grammar fills strings to their bounds;
the diagnosis is cut at --gen-tokens, about the length of a real one. The models are made
by models/make_shaped_qwen.py on first use (a few minutes).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "models"))

from factory_copilot.config import SIMULATED_LINE, load_line  # noqa: E402
from factory_copilot.copilot import Copilot, LlamaCppBackend  # noqa: E402
from factory_copilot.copilot.explain import simulated_incident  # noqa: E402
from factory_copilot.copilot.prompt import diagnosis_messages  # noqa: E402


def read_bandwidth(mib: int = 512, repeats: int = 5) -> float:
    """Best-of-N bytes/s reading a large array (numpy sum streams it through the cores once)."""
    a = np.ones(mib * 2**20 // 8)
    a.sum()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a.sum()
        best = min(best, time.perf_counter() - t)
    return a.nbytes / best


def chatml(messages: list[dict[str, str]], generation_prompt: bool = True) -> str:
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return text + ("<|im_start|>assistant\n" if generation_prompt else "")


def alarm_messages(cop: Copilot, fault: str) -> list[dict[str, str]]:
    alarm, readings = simulated_incident(cop.line, fault, at_s=600)
    cop.history = type(cop.history)()
    for r in readings:
        cop.observe(r)
    return diagnosis_messages(cop.system, cop.evidence(alarm))


def timed_chat(backend: LlamaCppBackend, messages, schema, n_gen: int, prompt_tokens: int) -> dict[str, float]:
    started = time.perf_counter()
    backend.chat(messages, schema=schema, max_tokens=n_gen)
    total = time.perf_counter() - started
    s = backend.last_stats
    # count tokens in the context, not text pieces: random weights also pick padding tokens that print nothing
    n = max(1.0, s["context_tokens"] - prompt_tokens)
    return {"ttft": s["ttft_s"], "total": total, "generated": n, "gen_tps": (n - 1) / max(1e-9, total - s["ttft_s"])}


def bench_model(size: str, path: Path, threads: int, n_gen: int, bandwidth: float) -> dict[str, float]:
    line = load_line(SIMULATED_LINE)
    started = time.perf_counter()
    backend = LlamaCppBackend(path, n_ctx=4096, n_threads=threads, seed=1)
    llama = backend.load()
    load_s = time.perf_counter() - started
    cop = Copilot(line, backend=backend, max_tokens=n_gen)
    first = alarm_messages(cop, "bearing_wear")
    second = alarm_messages(cop, "air_leak")
    tok = lambda text: len(llama.tokenize(text.encode(), add_bos=False, special=True))  # noqa: E731
    prefix = tok(chatml(first[:1], generation_prompt=False))
    total_prompt = tok(chatml(first))
    second_prompt = tok(chatml(second))
    print(f"[{size}] {path.name}: {path.stat().st_size / 2**20:.0f} MiB, loaded in {load_s:.2f} s, {threads} threads")
    print(f"[{size}] prompt tokens: {total_prompt} (fixed prefix {prefix}, alarm data {total_prompt - prefix}); "
          f"second alarm {second_prompt} ({second_prompt - prefix} new)")

    cold = timed_chat(backend, first, cop.schema, n_gen, total_prompt)
    print(f"[{size}] cold: first token {cold['ttft']:.2f} s ({total_prompt / cold['ttft']:.1f} prompt tok/s), "
          f"diagnosis ({cold['generated']:.0f} tokens) {cold['total']:.2f} s, generation {cold['gen_tps']:.1f} tok/s (grammar)")
    warm = timed_chat(backend, second, cop.schema, n_gen, second_prompt)
    new_tokens = second_prompt - prefix
    print(f"[{size}] warm (prefix cached): first token {warm['ttft']:.2f} s ({new_tokens / warm['ttft']:.1f} prompt tok/s "
          f"on the {new_tokens} new tokens), diagnosis {warm['total']:.2f} s, generation {warm['gen_tps']:.1f} tok/s (grammar)")
    # the forward pass alone, one token at a time (what generation costs without sampling and Python streaming);
    # every weight is read once per token, so this is what the memory bandwidth bounds
    token = llama.tokenize(b" the", add_bos=False)[0]
    n_decode = 32
    started = time.perf_counter()
    for _ in range(n_decode):
        llama.eval([token])
    decode_tps = n_decode / (time.perf_counter() - started)
    limit = bandwidth / path.stat().st_size
    share = decode_tps / limit
    print(f"[{size}] decode (forward pass only) {decode_tps:.1f} tok/s; bandwidth limit {limit:.1f} tok/s "
          f"({path.stat().st_size / 2**20:.0f} MiB per token at {bandwidth / 1e9:.1f} GB/s) -> {share:.0%}")
    return {"warm_total": warm["total"], "cold_total": cold["total"], "gen_tps": warm["gen_tps"], "share": share,
            "decode_tps": decode_tps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["0.5b", "1.5b"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gen-tokens", type=int, default=150)
    args = ap.parse_args()
    from make_shaped_qwen import make, train_vocabulary, shaped_path

    missing = [s for s in args.sizes if not shaped_path(s).exists()]
    vocabulary = train_vocabulary() if missing else None
    paths = {s: make(s, vocabulary=vocabulary) for s in args.sizes}
    bandwidth = read_bandwidth()
    print(f"memory read bandwidth: {bandwidth / 1e9:.1f} GB/s (numpy sum over 512 MiB, best of 5)")
    results = {s: bench_model(s, p, args.threads, args.gen_tokens, bandwidth) for s, p in paths.items()}
    key = "1.5b" if "1.5b" in results else args.sizes[-1]
    r = results[key]
    print(f"copilot: {r['warm_total']:.1f} s to diagnosis ({key.upper()}, warm), {r['gen_tps']:.1f} tok/s generation, "
          f"{r['share']:.0%} of bandwidth limit")  # generation under the grammar; the share is the forward pass's


if __name__ == "__main__":
    main()
