"""Write a tiny Qwen2-architecture GGUF with random weights, for tests of the real llama-cpp-python path.

The model is useless as a language model but complete as a file: qwen2 tensors,
a real byte-level BPE tokenizer (gpt2 model, qwen2 pre-tokenizer, the 256 byte
tokens, a few merges, the ChatML specials) and a ChatML ``tokenizer.chat_template``,
so llama.cpp loads it, applies the template, tokenizes, samples under a JSON
grammar and streams exactly as it would with a real Qwen (~0.4 MB, loads in ~20 ms).

    python models/make_tiny_qwen.py models/tiny-qwen.gguf
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

# the ChatML template Qwen2.5 ships, reduced to what the copilot sends (system/user/assistant turns)
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# a few merges so the BPE path is exercised (results are added to the vocabulary)
MERGES = [("Ġ", "t"), ("h", "e"), ("i", "n"), ("Ġt", "he"), ("e", "r"), ("a", "n"), ("o", "n"), ("r", "e")]


def byte_tokens() -> list[str]:
    """GPT-2's reversible byte -> printable unicode mapping, one token per byte, in byte order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = {b: chr(b) for b in printable}
    n = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + n)
            n += 1
    return [chars[b] for b in range(256)]


def write_qwen2(path: str | Path, tokens: list[str], types: list[int], merges: list[str], *, n_embd: int,
                n_layer: int, n_head: int, n_head_kv: int, n_ff: int, n_ctx: int = 32768, tied: bool = False,
                dtype: type = np.float16, std: float = 0.5, seed: int = 0, name: str = "qwen2-random") -> Path:
    """Write a Qwen2-architecture GGUF with random weights and the given byte-level BPE vocabulary."""
    import gguf  # dev dependency, only needed to make test and benchmark models

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_vocab = len(tokens)
    eot, im_start, im_end = (tokens.index(s) for s in SPECIALS)

    w = gguf.GGUFWriter(str(path), "qwen2")
    w.add_name(name)
    w.add_context_length(n_ctx)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_freq_base(1_000_000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if dtype == np.float16 else gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(eot)
    w.add_eos_token_id(im_end)
    w.add_pad_token_id(eot)
    w.add_add_bos_token(False)
    w.add_chat_template(CHATML_TEMPLATE)

    def mat(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols), dtype=np.float32) * std).astype(dtype)

    n_kv = (n_embd // n_head) * n_head_kv
    w.add_tensor("token_embd.weight", mat(n_vocab, n_embd))
    for i in range(n_layer):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        w.add_tensor(p + "attn_q.weight", mat(n_embd, n_embd))
        w.add_tensor(p + "attn_q.bias", np.zeros(n_embd, dtype=np.float32))
        w.add_tensor(p + "attn_k.weight", mat(n_kv, n_embd))
        w.add_tensor(p + "attn_k.bias", np.zeros(n_kv, dtype=np.float32))
        w.add_tensor(p + "attn_v.weight", mat(n_kv, n_embd))
        w.add_tensor(p + "attn_v.bias", np.zeros(n_kv, dtype=np.float32))
        w.add_tensor(p + "attn_output.weight", mat(n_embd, n_embd))
        w.add_tensor(p + "ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        w.add_tensor(p + "ffn_gate.weight", mat(n_ff, n_embd))
        w.add_tensor(p + "ffn_up.weight", mat(n_ff, n_embd))
        w.add_tensor(p + "ffn_down.weight", mat(n_embd, n_ff))
    w.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    if not tied:  # Qwen2.5 0.5B-3B tie the output projection to the embedding; llama.cpp reuses token_embd
        w.add_tensor("output.weight", mat(n_vocab, n_embd))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_tiny_qwen(path: str | Path, *, n_embd: int = 64, n_layer: int = 2, n_head: int = 4, n_head_kv: int = 2,
                    n_ff: int = 128, n_ctx: int = 32768, seed: int = 0, q4_k_m: bool = False) -> Path:
    """The tiny model in F16, or with ``q4_k_m`` quantized like the published Qwen files (K-quant kernels, ~1 MB)."""
    import gguf

    tokens = byte_tokens() + ["".join(m) for m in MERGES] + SPECIALS
    types = [gguf.TokenType.NORMAL] * (len(tokens) - len(SPECIALS)) + [gguf.TokenType.CONTROL] * len(SPECIALS)
    path = Path(path)
    if q4_k_m:
        n_embd, n_ff = max(n_embd, 256), max(n_ff, 512)  # K-quant blocks hold 256 weights: rows must fill them
    f16 = path.with_name(path.stem + "-f16.gguf") if q4_k_m else path
    write_qwen2(f16, tokens, types, [f"{a} {b}" for a, b in MERGES], n_embd=n_embd, n_layer=n_layer,
                n_head=n_head, n_head_kv=n_head_kv, n_ff=n_ff, n_ctx=n_ctx, seed=seed, name="tiny-qwen2-random")
    if q4_k_m:
        quantize(f16, path)
        f16.unlink()
    return path


def quantize(src: Path, dst: Path, threads: int = 2) -> None:
    """Q4_K_M, as the published Qwen2.5 GGUFs, with llama.cpp's own quantizer."""
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
    params.nthread = threads
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize failed ({rc}) for {src}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", nargs="?", default=str(Path(__file__).parent / "tiny-qwen.gguf"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--q4-k-m", action="store_true", help="quantize like the published files (needs llama-cpp-python)")
    args = ap.parse_args()
    out = write_tiny_qwen(args.out, seed=args.seed, q4_k_m=args.q4_k_m)
    print(f"{out} ({out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
