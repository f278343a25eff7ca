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
from factory_copilot.copilot.prompt import diagnosis_messages  # noqa: E402
from simulators.evaluation import simulated_incident  # noqa: E402


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
    cpu = time.process_time()
    d = asyncio.run(cop._model_diagnosis(alarm_id, None))
    cpu = time.process_time() - cpu  # the CPU the model used: on a shared machine, what it would take on a quiet one
    t = cop.last_timing
    if d.source != "model":
        raise SystemExit(f"no model diagnosis: {d.fallback_reason}")
    generated = t["completion_chunks"]
    return {"first": t["first_words_s"], "complete": t["complete_s"], "prompt": prompt, "generated": generated,
            "gen_tps": generated / max(1e-9, t["complete_s"] - t["first_words_s"]) if generated > 1 else 0.0,
            "cpu": cpu}


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
    tag = f"[{size} x{threads}]"
    print(f"{tag} {path.name}: {path.stat().st_size / 2**20:.0f} MiB, loaded in {load_s:.2f} s")

    cold = diagnose(cop, first_alarm, tok)
    print(f"{tag} cold (nothing cached): prompt {cold['prompt']:.0f} tokens (fixed prefix {prefix}, alarm data "
          f"{cold['prompt'] - prefix:.0f}); first words {cold['first']:.2f} s, complete diagnosis {cold['complete']:.2f} s, "
          f"{cold['generated']:.0f} tokens out; CPU {cold['cpu']:.2f} s")

    backend.warm(cop.system)  # what the service does at start: the prefix computed and saved
    restarted = LlamaCppBackend(path, n_ctx=4096, n_threads=threads, seed=1, state_dir=state)  # a restart
    t = time.perf_counter()
    restarted.load()
    stats = restarted.warm(cop.system)
    restore_s = time.perf_counter() - t
    cop2, alarm = copilot_for(restarted, "air_leak", "A-warm")
    warm = diagnose(cop2, alarm, tok)
    print(f"{tag} warm (restarted: load + prefix restored from disk {restore_s:.2f} s, of which restore "
          f"{stats['warm_s']:.2f} s): {warm['prompt'] - prefix:.0f} new prompt tokens; first words {warm['first']:.2f} s, "
          f"complete diagnosis {warm['complete']:.2f} s, {warm['generated']:.0f} tokens out at {warm['gen_tps']:.1f} tok/s "
          f"(one call under the schema grammar); CPU {warm['cpu']:.2f} s")

    # the same alarm from the same restored prefix, answered in two steps (summary free, choices under a small grammar)
    restarted.warm(cop.system)
    cop2.two_steps = True
    two = diagnose(cop2, alarm, tok)
    cop2.two_steps = False
    print(f"{tag} two steps (summary free, then the choices under a small grammar): first words {two['first']:.2f} s, "
          f"complete {two['complete']:.2f} s, {two['generated']:.0f} tokens out; CPU {two['cpu']:.2f} s")
    one = warm
    # and free (no grammar at all), the same number of tokens: what the grammar itself costs per token
    restarted.warm(cop.system)
    messages = diagnosis_messages(cop2.system, cop2.pack(alarm))
    t = time.perf_counter()
    restarted.chat(messages, schema=None, max_tokens=max(2, int(one["generated"])))
    s = restarted.last_stats
    produced = s["context_tokens"] - tok(chatml(messages))  # tokens, not text pieces: random weights print blanks too
    free_tps = (produced - 1) / max(1e-9, time.perf_counter() - t - s["ttft_s"])
    print(f"{tag} free generation {free_tps:.1f} tok/s vs {one['gen_tps']:.1f} under the full grammar; kept: "
          f"{'two steps' if two['cpu'] < one['cpu'] else 'one call under the grammar'} (less CPU for the same validated "
          f"result: {one['cpu']:.2f} s one call vs {two['cpu']:.2f} s two steps)")

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
    print(f"{tag} forward pass {decode_tps:.1f} tok/s; bandwidth limit {limit:.1f} tok/s "
          f"({path.stat().st_size / 2**20:.0f} MiB per token at {bandwidth / 1e9:.1f} GB/s with {threads} threads) "
          f"-> {share:.0%}")
    return {"warm": warm["complete"], "first": warm["first"], "cold": cold["complete"], "gen_tps": warm["gen_tps"],
            "share": share, "warm_cpu": warm["cpu"]}


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
    print(f"(CPU time of the warm diagnosis: {r['warm_cpu']:.1f} s: with {key[1]} thread(s), about its wall time on a quiet machine)")
    print(f"copilot: {r['warm']:.1f} s to diagnosis ({key[0].upper()}, warm), {r['first']:.1f} s to first words, "
          f"{r['gen_tps']:.1f} tok/s generation, {r['share']:.0%} of bandwidth limit")


if __name__ == "__main__":
    main()
