"""Benchmark the copilot's model path: Qwen2.5-0.5B/1.5B-shaped Q4_K_M GGUFs (random weights) on the CPU.

For each model and thread count (default: the service's, all cores but one): prompt tokens of a
typical alarm (fixed prefix + compact evidence block), then
- cold: the first alarm after a start with nothing cached (prefix and data processed);
- warm: after a restart, the fixed prefix restored from disk (``state_dir``), then an alarm;
each with the time to the first words of the summary the operator reads, the time to a complete,
validated diagnosis, and tokens in/out; generation speed under the JSON grammar and free (the same
prompt and token count, so the grammar's own cost shows), and the forward pass's speed as a share
of the memory-bandwidth limit measured at the same thread count (every weight is read once per
token; the limit is the model's bytes over the bandwidth that many threads reach reading memory).

    python bench/copilot.py [--sizes 0.5b 1.5b] [--threads 1 2]

The weights are random, so the text is noise and the grammar fills the summary to its bound
(160 characters): a real Qwen writes a sentence or two and stops sooner. The models are made by
models/make_shaped_qwen.py on first use (a few minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "models"))

from factory_copilot.config import SIMULATED_LINE, load_line  # noqa: E402
from factory_copilot.copilot import Copilot, LlamaCppBackend  # noqa: E402
from factory_copilot.copilot.explain import simulated_incident  # noqa: E402
from factory_copilot.copilot.prompt import diagnosis_messages  # noqa: E402


def read_bandwidth(threads: int, mib: int = 1024, repeats: int = 5) -> float:
    """Best-of-N bytes/s reading a large array with ``threads`` threads at once (numpy releases the GIL while summing)."""
    a = np.ones(mib * 2**20 // 8)
    parts = np.array_split(a, threads)
    for p in parts:
        p.sum()
    best = float("inf")
    for _ in range(repeats):
        barrier = threading.Barrier(threads + 1)

        def read(p: np.ndarray) -> None:
            barrier.wait()
            p.sum()

        workers = [threading.Thread(target=read, args=(p,)) for p in parts]
        for w in workers:
            w.start()
        barrier.wait()
        t = time.perf_counter()
        for w in workers:
            w.join()
        best = min(best, time.perf_counter() - t)
    return a.nbytes / best


def chatml(messages: list[dict[str, str]], generation_prompt: bool = True) -> str:
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return text + ("<|im_start|>assistant\n" if generation_prompt else "")


def copilot_for(backend: LlamaCppBackend, fault: str, alarm_id: str) -> tuple[Copilot, str]:
    line = load_line(SIMULATED_LINE)
    cop = Copilot(line, backend=backend, timeout_s=600)
    alarm, readings = simulated_incident(line, fault, at_s=600)
    alarm.alarm_id = alarm_id
    for r in readings:
        cop.observe(r)
    cop.evidence(alarm)
    return cop, alarm_id


def diagnose(cop: Copilot, alarm_id: str, tok) -> dict[str, float]:
    pack = cop.pack(alarm_id)
    prompt = tok(chatml(diagnosis_messages(cop.system, pack)))
    d = asyncio.run(cop._model_diagnosis(alarm_id, None))
    t = cop.last_timing
    if d.source != "model":
        raise SystemExit(f"no model diagnosis: {d.fallback_reason}")
    generated = t["context_tokens"] - prompt
    return {"first": t["first_words_s"], "complete": t["complete_s"], "prompt": prompt, "generated": generated,
            "cached": t["cached_tokens"], "gen_tps": (generated - 1) / max(1e-9, t["complete_s"] - t["ttft_s"]),
            "ttft": t["ttft_s"]}


def free_generation(backend: LlamaCppBackend, messages, n: int) -> float:
    """Tokens/s writing ``n`` tokens without a grammar, on the same (cached) prompt."""
    backend.chat(messages, schema=None, max_tokens=1)  # the prompt is in the cache now
    started = time.perf_counter()
    backend.chat(messages, schema=None, max_tokens=n)
    s = backend.last_stats
    total = time.perf_counter() - started
    produced = max(1.0, s["context_tokens"] - s["cached_tokens"] + 1)
    return (produced - 1) / max(1e-9, total - s["ttft_s"])


def bench(size: str, path: Path, threads: int) -> dict[str, float]:
    bandwidth = read_bandwidth(threads)
    state = Path(tempfile.mkdtemp(prefix="fc-bench-state-"))
    started = time.perf_counter()
    backend = LlamaCppBackend(path, n_ctx=4096, n_threads=threads, seed=1, state_dir=state)
    llama = backend.load()
    load_s = time.perf_counter() - started
    tok = lambda text: len(llama.tokenize(text.encode(), add_bos=False, special=True))  # noqa: E731
    cop, first_alarm = copilot_for(backend, "bearing_wear", "A-cold")
    prefix = tok(chatml([{"role": "system", "content": cop.system}], generation_prompt=False))
    print(f"[{size} x{threads}] {path.name}: {path.stat().st_size / 2**20:.0f} MiB, loaded in {load_s:.2f} s")

    cold = diagnose(cop, first_alarm, tok)
    print(f"[{size} x{threads}] cold (nothing cached): prompt {cold['prompt']:.0f} tokens (fixed prefix {prefix}, "
          f"alarm data {cold['prompt'] - prefix:.0f}); first words {cold['first']:.2f} s, complete diagnosis "
          f"{cold['complete']:.2f} s, {cold['generated']:.0f} tokens out")

    backend.warm(cop.system)  # what the service does at start: computes the prefix and saves it
    restarted = LlamaCppBackend(path, n_ctx=4096, n_threads=threads, seed=1, state_dir=state)
    t = time.perf_counter()
    restarted.load()
    stats = restarted.warm(cop.system)
    restore_s = time.perf_counter() - t
    cop2, warm_alarm = copilot_for(restarted, "air_leak", "A-warm")
    warm = diagnose(cop2, warm_alarm, tok)
    print(f"[{size} x{threads}] warm (restarted, prefix restored from disk in {stats['warm_s']:.2f} s, load+restore "
          f"{restore_s:.2f} s): prompt {warm['prompt']:.0f} tokens ({warm['prompt'] - warm['cached']:.0f} new); "
          f"first words {warm['first']:.2f} s, complete diagnosis {warm['complete']:.2f} s, "
          f"{warm['generated']:.0f} tokens out at {warm['gen_tps']:.1f} tok/s (grammar)")

    messages = diagnosis_messages(cop2.system, cop2.pack(warm_alarm))
    free_tps = free_generation(restarted, messages, int(warm["generated"]))
    print(f"[{size} x{threads}] generation without the grammar: {free_tps:.1f} tok/s "
          f"(grammar {warm['gen_tps']:.1f} tok/s: {warm['gen_tps'] / free_tps - 1:+.0%})")

    llama = restarted.load()
    token = llama.tokenize(b" the", add_bos=False)[0]
    llama.reset()
    llama.eval([token])
    n_decode = 24
    t = time.perf_counter()
    for _ in range(n_decode):
        llama.eval([token])
    decode_tps = n_decode / (time.perf_counter() - t)
    limit = bandwidth / path.stat().st_size
    share = decode_tps / limit
    print(f"[{size} x{threads}] forward pass {decode_tps:.1f} tok/s; bandwidth limit {limit:.1f} tok/s "
          f"({path.stat().st_size / 2**20:.0f} MiB per token at {bandwidth / 1e9:.1f} GB/s with {threads} threads) "
          f"-> {share:.0%}")
    return {"warm": warm["complete"], "first": warm["first"], "cold": cold["complete"], "gen_tps": warm["gen_tps"],
            "free_tps": free_tps, "share": share}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["0.5b", "1.5b"])
    ap.add_argument("--threads", nargs="+", type=int, help="llama.cpp threads (default: the service's)")
    args = ap.parse_args()
    from make_shaped_qwen import make, shaped_path, train_vocabulary

    from factory_copilot.copilot.backends import default_threads

    threads = args.threads or [default_threads()]
    missing = [s for s in args.sizes if not shaped_path(s).exists()]
    vocabulary = train_vocabulary() if missing else None
    paths = {s: make(s, vocabulary=vocabulary) for s in args.sizes}
    print(f"{os.cpu_count()} cores; threads {threads} (the service's default: {default_threads()})")
    results = {(s, n): bench(s, p, n) for s, p in paths.items() for n in threads}
    key = ("1.5b" if "1.5b" in paths else args.sizes[-1], default_threads() if default_threads() in threads else threads[0])
    r = results[key]
    print(f"copilot: {r['warm']:.1f} s to diagnosis ({key[0].upper()}, warm), {r['first']:.1f} s to first words, "
          f"{r['gen_tps']:.1f} tok/s generation, {r['share']:.0%} of bandwidth limit")


if __name__ == "__main__":
    main()
