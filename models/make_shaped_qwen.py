"""Write random-weight GGUFs with the exact shapes of Qwen2.5-0.5B/1.5B-Instruct at Q4_K_M, for the benchmark.

Same tensor shapes, vocabulary size (151,936), quantization and chat template as
the published files, so llama.cpp does the same work per token; the answers are
noise. The tokenizer is a byte-level BPE trained here on local English text and
code (the repo's runbooks and sources plus Python's own docs), so prompts
tokenize to roughly as many tokens as with Qwen's tokenizer; the vocabulary is
padded with unused tokens to Qwen's size.

    python models/make_shaped_qwen.py 0.5b 1.5b      # -> models/shaped-qwen2.5-{0.5b,1.5b}-q4_k_m.gguf
"""

from __future__ import annotations

import argparse
import sys
import sysconfig
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from make_tiny_qwen import SPECIALS, quantize, write_qwen2  # noqa: E402

VOCAB = 151_936
# Qwen2.5-*-Instruct config.json: hidden, layers, heads, kv heads, intermediate; 0.5B-3B tie the embeddings
SHAPES = {
    "0.5b": dict(n_embd=896, n_layer=24, n_head=14, n_head_kv=2, n_ff=4864, tied=True),
    "1.5b": dict(n_embd=1536, n_layer=28, n_head=12, n_head_kv=2, n_ff=8960, tied=True),
    "3b": dict(n_embd=2048, n_layer=36, n_head=16, n_head_kv=2, n_ff=11008, tied=True),
}


def shaped_path(size: str, directory: Path = HERE) -> Path:
    return directory / f"shaped-qwen2.5-{size}-q4_k_m.gguf"


def corpus_files(limit_bytes: int = 40_000_000) -> list[str]:
    """Local English prose and code to learn merges from: our repo first, then the Python standard library."""
    repo = HERE.parent
    files = [str(p) for p in sorted(repo.glob("src/factory_copilot/seeds/**/*.md")) + sorted(repo.glob("src/factory_copilot/seeds/**/*.yaml"))
             + sorted(repo.glob("src/**/*.py")) + sorted(repo.glob("*.md"))]
    total = sum(Path(f).stat().st_size for f in files)
    for p in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        if total > limit_bytes:
            break
        files.append(str(p))
        total += p.stat().st_size
    return files


def train_vocabulary(vocab_size: int = 48_000) -> tuple[list[str], list[int], list[str]]:
    """Byte-level BPE tokens, GGUF token types and merges, padded to Qwen's vocabulary size."""
    import gguf
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    def texts():
        for f in corpus_files():
            yield Path(f).read_text(encoding="utf-8", errors="ignore")

    tok.train_from_iterator(texts(), trainer)
    import json

    model = json.loads(tok.to_str())["model"]
    vocab: dict[str, int] = model["vocab"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    tokens += SPECIALS
    types = [gguf.TokenType.NORMAL] * (len(tokens) - len(SPECIALS)) + [gguf.TokenType.CONTROL] * len(SPECIALS)
    pad = VOCAB - len(tokens)
    tokens += [f"[PAD{i}]" for i in range(pad)]
    types += [gguf.TokenType.UNUSED] * pad
    return tokens, types, merges


def make(size: str, directory: Path = HERE, threads: int = 2, vocabulary: tuple | None = None) -> Path:
    out = shaped_path(size, directory)
    if out.exists():
        return out
    tokens, types, merges = vocabulary or train_vocabulary()
    f16 = directory / f"shaped-qwen2.5-{size}-f16.gguf"  # intermediate; *.gguf is git-ignored if we are interrupted
    started = time.perf_counter()
    write_qwen2(f16, tokens, types, merges, std=0.02, seed=1, name=f"shaped-qwen2.5-{size}-random", **SHAPES[size])
    quantize(f16, out, threads)
    f16.unlink()
    print(f"{out.name}: {out.stat().st_size / 2**20:.0f} MiB in {time.perf_counter() - started:.0f} s", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sizes", nargs="*", default=["0.5b", "1.5b"], choices=sorted(SHAPES))
    ap.add_argument("--dir", default=str(HERE))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    vocabulary = train_vocabulary() if any(not shaped_path(s, Path(args.dir)).exists() for s in args.sizes) else None
    for size in args.sizes:
        make(size, Path(args.dir), args.threads, vocabulary)


if __name__ == "__main__":
    main()
