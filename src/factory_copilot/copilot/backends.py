"""The language-model backends: in-process llama.cpp (GGUF) and an OpenAI-compatible server, each an ``LLMBackend``.

What a backend offers the station, returns and raises is ``language_model.py``'s protocol. Calls are blocking; the
station runs them in a worker thread. The llama.cpp backend holds one model instance per file and serialises calls
with a lock, so concurrent alarms queue instead of fighting over one context.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from factory_copilot.copilot.decoding import FormDecoder, Sampling, Vocabulary, says_something
from factory_copilot.copilot.language_model import (AnswerForm, BackendError, LLMBackend, Messages, ModelTimeout,
                                                    ModelUnavailable, OnToken, Reply)

__all__ = ["BackendError", "LLMBackend", "LlamaCppBackend", "ModelTimeout", "ModelUnavailable", "OnToken",
           "OpenAIBackend", "Reply"]

log = logging.getLogger(__name__)

FREE_MIN_TOKENS = 4  # a free answer's tokens before it may end its turn


def default_threads() -> int:
    """llama.cpp's fewest threads when none are configured: all cores but one, so the pipeline keeps a core while the
    model writes. More are taken only while the rest of the machine leaves them idle (``threads_for``)."""
    return max(1, (os.cpu_count() or 2) - 1)


def threads_for(spare_cores: float | None, n_threads: int, cores: int) -> int:
    """Threads for the model's next step: every core the rest of the machine leaves (nearly) idle, never fewer than
    ``n_threads``.

    Prompt processing and generation both scale with cores (measured on this 2-core box, quiet, 1.5B Q4_K_M: a
    160-token prompt at 68 against 31 tokens/s, a forward pass 85 against 151 ms); but llama.cpp's threads wait
    for each other at every layer by spinning, so a thread that shares its core with other work holds the others
    up (at load 4-7: a 120-token prompt took 8.4 s with two threads against 4.5 s with one). A core counts as
    spare when at least 60 % of it was idle lately.
    """
    if spare_cores is None:
        return n_threads
    return max(n_threads, min(cores, int(spare_cores + 0.4)))


class SpareCores:
    """How many cores the rest of the machine left idle over the last seconds: sampled twice a second, once started.

    The model's own CPU time counts as spare (it is what the model is about to use again), so back-to-back alarms
    do not read their own work as load.
    """

    def __init__(self, window_s: float = 3.0, every_s: float = 0.5):
        import collections

        import psutil

        self._psutil = psutil
        self._me = psutil.Process()
        self.window_s = window_s
        self.every_s = every_s
        self.cores = psutil.cpu_count() or 1
        self._samples: collections.deque = collections.deque()
        self._lock = threading.Lock()
        self._sample()
        threading.Thread(target=self._run, name="copilot-spare-cores", daemon=True).start()

    def _sample(self) -> None:
        t = self._psutil.cpu_times()
        own = self._me.cpu_times()
        with self._lock:
            self._samples.append((time.monotonic(), sum(t), t.idle + getattr(t, "iowait", 0.0), own.user + own.system))
            while len(self._samples) > 2 and self._samples[1][0] < time.monotonic() - self.window_s:
                self._samples.popleft()

    def _run(self) -> None:
        while True:
            time.sleep(self.every_s)
            try:
                self._sample()
            except Exception:  # a sampler must never take the model down; the batch threads fall back to n_threads
                return

    def spare(self) -> float | None:
        """Cores not used by others lately; None until two samples are a quarter second apart."""
        self._sample()
        with self._lock:
            first, last = self._samples[0], self._samples[-1]
        return spare_between(first, last, self.cores)


def spare_between(first: tuple[float, float, float, float], last: tuple[float, float, float, float],
                  cores: int) -> float | None:
    """Cores left to this process between two samples of (time, all CPU time, idle CPU time, this process' CPU time)."""
    (t0, total0, idle0, own0), (t1, total1, idle1, own1) = first, last
    if t1 - t0 < 0.25 or total1 <= total0:
        return None
    idle_share = (idle1 - idle0) / (total1 - total0)
    return max(0.0, min(float(cores), cores * idle_share + (own1 - own0) / (t1 - t0)))


class OnePerModelFile:
    """``shared()`` gives one instance per class, model file and settings in this process (its memory is loaded once)."""

    _instances: dict[tuple, Any] = {}
    _instances_lock = threading.Lock()

    @classmethod
    def shared(cls, model_path: str | Path, **kwargs: Any) -> Any:
        key = (cls, str(model_path), tuple(sorted(kwargs.items())))
        with OnePerModelFile._instances_lock:
            if key not in OnePerModelFile._instances:
                OnePerModelFile._instances[key] = cls(model_path, **kwargs)
            return OnePerModelFile._instances[key]


class LlamaCppBackend(OnePerModelFile, LLMBackend):
    """A GGUF model in this process via llama-cpp-python; the chat template comes from the model file."""

    supports_prefill = True  # chat() can continue a started answer (prefill), stop at a string, follow a GBNF grammar
    supports_forms = True  # answer(): the diagnosis' JSON written, chosen and given (decoding.py), no grammar

    def __init__(self, model_path: str | Path, *, n_ctx: int = 4096, n_threads: int | None = None,
                 n_gpu_layers: int = 0, n_batch: int = 512, temperature: float = 0.2, seed: int = 0,
                 state_dir: str | Path | None = None, n_threads_batch: int | None = None, flash_attn: bool = False):
        self.model_path = str(model_path)
        self.state_dir = Path(state_dir) if state_dir else None  # where the warm prompt prefix is kept across restarts
        self.name = Path(self.model_path).name
        self.n_ctx = n_ctx
        # generation: this many threads, or None for every core the machine leaves idle at the time, re-read between
        # forward passes (see threads_for), never fewer than all cores but one: the pipeline's core is the model's
        # only while the pipeline leaves it idle, and the worker process runs at a lower priority (worker.serve)
        self.fixed_threads = n_threads
        self.n_threads = n_threads or default_threads()
        # prompt processing: this many threads, or None for every core the machine leaves idle at the time
        self.n_threads_batch = n_threads_batch
        self.flash_attn = flash_attn
        self._spare: SpareCores | None | bool = None  # False: not measurable here
        self._vocabulary: Vocabulary | None = None
        self.n_gpu_layers = n_gpu_layers
        self.n_batch = n_batch
        self.temperature = temperature
        self.seed = seed
        self._llama: Any = None
        self._chat_formatter: Any = None  # the model's own chat template, compiled on first use
        self._failed: str | None = None
        self._lock = threading.Lock()  # one context: one generation at a time, the others wait their turn
        self.calls = 0

    def stats(self) -> dict[str, Any]:
        return {"calls": self.calls}

    def load(self) -> Any:
        """Load the model once; a missing or broken file is logged in one line and raises ModelUnavailable."""
        if self._llama is not None:
            return self._llama
        if self._failed:
            raise ModelUnavailable(self._failed)
        path = Path(self.model_path)
        try:
            if not path.is_file():
                raise FileNotFoundError("file not found")
            from llama_cpp import Llama

            started = time.perf_counter()
            if not (self.fixed_threads and self.n_threads_batch) and not self.n_gpu_layers:
                self._spare_cores()  # sampling while the model loads: the first prompt (the prefix) knows the idle cores
            self._llama = Llama(
                model_path=str(path), n_ctx=self.n_ctx, n_threads=self.n_threads,
                n_threads_batch=self.n_threads_batch or self.n_threads, n_gpu_layers=self.n_gpu_layers,
                n_batch=self.n_batch, seed=self.seed, flash_attn=self.flash_attn, verbose=False,
            )
            log.info("copilot model %s loaded in %.2f s (threads: %s; context %d)", self.name,
                     time.perf_counter() - started, self.threads_text(), self.n_ctx)
            return self._llama
        except ImportError:
            self._failed = "llama-cpp-python is not installed (pip install 'factory-copilot[llm]')"
        except Exception as exc:  # llama.cpp reports a bad file as ValueError/RuntimeError with little detail
            self._failed = f"cannot load model {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        log.error("copilot model unavailable, runbook explanations only: %s", self._failed)
        raise ModelUnavailable(self._failed)

    def _spare_cores(self) -> tuple[float | None, int]:
        """Cores the rest of the machine leaves idle now (None: not measurable) and the machine's cores."""
        if self._spare is None:
            try:
                self._spare = SpareCores()
            except Exception as exc:  # no psutil, no /proc: the configured (or default) threads throughout
                log.info("copilot: spare cores not measurable (%s); threads = %d", exc, self.n_threads)
                self._spare = False
        if not self._spare:
            return None, self.n_threads
        return self._spare.spare(), self._spare.cores

    def threads(self) -> tuple[int, int]:
        """Threads for the next step (generation, prompt): fixed where configured, else the cores idle now."""
        if self.n_gpu_layers:
            return self.n_threads, self.n_threads_batch or self.n_threads  # the GPU does the arithmetic
        if self.fixed_threads and self.n_threads_batch:
            return self.fixed_threads, self.n_threads_batch
        spare, cores = self._spare_cores()
        adaptive = threads_for(spare, self.n_threads, cores)
        return self.fixed_threads or adaptive, self.n_threads_batch or adaptive

    def threads_text(self) -> str:
        """The thread setting in words, for log lines: '1' or '1-2, by the cores idle at the time'."""
        most = os.cpu_count() or self.n_threads
        if self.fixed_threads or self.n_gpu_layers or most <= self.n_threads:
            return str(self.n_threads)
        return f"{self.n_threads}-{most}, by the cores idle at the time"

    def batch_threads(self) -> int:
        """Threads for the next prompt: fixed, or as many as the machine has spare cores now (at least n_threads)."""
        return self.threads()[1]

    def _set_threads(self, llama: Any) -> int:
        generation, batch = self.threads()
        llama._ctx.set_n_threads(generation, batch)
        return batch

    def vocabulary(self) -> Vocabulary:
        """Each token's text and the masks the written answer needs (read once per model, ~0.2 s for Qwen's 152k)."""
        if self._vocabulary is None:
            self._vocabulary = Vocabulary(self.load())
        return self._vocabulary

    # ---- the fixed prompt prefix, warm in the KV cache and on disk ----------------------------------------------

    def _state_file(self, prefix: str) -> Path | None:
        if self.state_dir is None:
            return None
        st = Path(self.model_path).stat()
        key = hashlib.sha256(json.dumps([Path(self.model_path).name, st.st_size, st.st_mtime_ns, self.n_ctx, self.n_batch,
                                         self.n_gpu_layers, self.flash_attn, prefix]).encode()).hexdigest()[:20]
        return self.state_dir / f"prefix-{Path(self.model_path).stem}-{key}.kv"

    def prompt_stem(self, system: str, user_prefix: str = "") -> str:
        """The rendered prompt up to where the user message's own part starts: the same for every alarm of a line."""
        mark = "\ue000"  # a private-use character: no template or prompt writes it
        rendered = self._formatter(self.load())(messages=[{"role": "system", "content": system},
                                                          {"role": "user", "content": user_prefix + mark}]).prompt
        return rendered[: rendered.index(mark)]

    def warm(self, system: str, user_prefix: str = "", timeout_s: float | None = None) -> Reply:
        """Have the fixed prefix in the KV cache: restored from disk if saved before, else computed and saved.

        The prefix is the prompt up to the user message's own part: the system prompt, the chat template's turn
        markers and ``user_prefix`` (what every user message starts with). llama.cpp's state (the KV cache of the
        prefix) is written with ``llama_state_get_data`` and its token ids, not with ``Llama.save_state``, which
        would also copy a logits array of hundreds of MB. Runs to the end whatever ``timeout_s`` (it is one batch).
        """
        import llama_cpp

        with self._lock:
            llama = self.load()
            started = time.perf_counter()
            self.vocabulary()  # read now, not on the first alarm
            stem = self.prompt_stem(system, user_prefix)
            path = self._state_file(stem)
            if path is not None and path.is_file():
                try:
                    blob = path.read_bytes()
                    head_len = int.from_bytes(blob[:8], "little")
                    head = json.loads(blob[8 : 8 + head_len])
                    data = blob[8 + head_len :]
                    buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
                    if llama_cpp.llama_state_set_data(llama._ctx.ctx, buf, len(data)) != len(data):
                        raise RuntimeError("llama_state_set_data refused the saved state")
                    llama.input_ids[: len(head["tokens"])] = head["tokens"]
                    llama.n_tokens = len(head["tokens"])
                    llama._requires_eval = True
                    stats = {"restored": 1.0, "warm_s": time.perf_counter() - started,
                             "prefix_tokens": float(llama.n_tokens)}
                    log.info("copilot prompt prefix restored from %s (%d tokens) in %.2f s", path, llama.n_tokens,
                             stats["warm_s"])
                    return Reply("", stats)
                except Exception as exc:  # a stale or damaged file costs one warm-up, never the model
                    log.warning("copilot prompt prefix in %s not usable (%s); computing it again", path, exc)
                    llama.reset()
            tokens = llama.tokenize(stem.encode(), add_bos=True, special=True)
            cached = llama.input_ids[: llama.n_tokens].tolist()
            same = next((i for i, (a, b) in enumerate(zip(cached, tokens)) if a != b), min(len(cached), len(tokens)))
            llama.n_tokens = min(same, len(tokens) - 1)
            self._set_threads(llama)
            try:
                llama.eval(tokens[llama.n_tokens :])
            except (ValueError, RuntimeError) as exc:
                raise BackendError(f"llama.cpp: {exc}") from None
            stats = {"restored": 0.0, "warm_s": time.perf_counter() - started, "prefix_tokens": float(llama.n_tokens)}
            if path is not None:
                try:
                    size = llama_cpp.llama_state_get_size(llama._ctx.ctx)
                    buf = (ctypes.c_uint8 * int(size))()
                    n = llama_cpp.llama_state_get_data(llama._ctx.ctx, buf, size)
                    head = json.dumps({"tokens": [int(t) for t in llama._input_ids]}).encode()
                    path.parent.mkdir(parents=True, exist_ok=True)
                    tmp = path.with_suffix(".tmp")
                    tmp.write_bytes(len(head).to_bytes(8, "little") + head + bytes(buf)[: int(n)])
                    tmp.replace(path)
                    for old in path.parent.glob(f"prefix-{Path(self.model_path).stem}-*.kv"):
                        if old != path:  # one prefix per model file: another prompt or setting made the old one stale
                            old.unlink(missing_ok=True)
                except OSError as exc:
                    log.warning("copilot prompt prefix not saved to %s: %s", path, exc)
            return Reply("", stats)

    def _formatter(self, llama: Any) -> Any:
        if self._chat_formatter is None:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            eos = llama.detokenize([llama.token_eos()], special=True).decode(errors="ignore")
            bos = llama.detokenize([llama.token_bos()], special=True).decode(errors="ignore")
            self._chat_formatter = Jinja2ChatFormatter(llama.metadata["tokenizer.chat_template"], eos_token=eos,
                                                       bos_token=bos)
        return self._chat_formatter

    def chat(self, messages: Messages, schema: dict | None = None, max_tokens: int = 512,
             on_token: OnToken | None = None, timeout_s: float | None = None, prefill: str = "",
             stop: list[str] | None = None, grammar: str | None = None) -> Reply:
        """The reply to ``messages``; with ``prefill`` the answer starts with that text (not returned, not generated).

        ``schema`` (JSON schema) or ``grammar`` (GBNF) constrain what is written; ``stop`` ends it at a string.
        """
        with self._lock:
            llama = self.load()
            self.calls += 1
            started = time.perf_counter()
            self._set_threads(llama)
            deadline = started + timeout_s if timeout_s else None
            # always stream: it is how tokens reach listeners and how the deadline is checked between tokens
            # (prompt processing itself runs to completion; keep the varying part of the prompt short)
            if prefill or stop or grammar:
                from llama_cpp import LlamaGrammar

                rendered = self._formatter(llama)(messages=messages)
                constraint = (LlamaGrammar.from_string(grammar, verbose=False) if grammar else
                              LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False) if schema else None)
                stream = llama.create_completion(
                    rendered.prompt + prefill, max_tokens=max_tokens, temperature=self.temperature, seed=self.seed,
                    stream=True, grammar=constraint, stop=list(stop or []) + list(rendered.stop or []))
                text_of = lambda chunk: chunk["choices"][0].get("text") or ""  # noqa: E731
            else:
                kwargs: dict[str, Any] = {}
                if schema is not None:
                    kwargs["response_format"] = {"type": "json_object", "schema": schema}
                else:  # free text (a question's answer): never an empty one
                    from llama_cpp import LogitsProcessorList

                    kwargs["logits_processor"] = LogitsProcessorList([says_something(self.vocabulary().end,
                                                                                      FREE_MIN_TOKENS)])
                stream = llama.create_chat_completion(
                    messages, max_tokens=max_tokens, temperature=self.temperature, seed=self.seed, stream=True, **kwargs
                )
                text_of = lambda chunk: chunk["choices"][0].get("delta", {}).get("content") or ""  # noqa: E731
            pieces: list[str] = []
            first = None
            n = 0
            before = llama.n_tokens
            try:
                for chunk in _guarded(stream):
                    piece = text_of(chunk)
                    if piece:
                        n += 1
                        if first is None:
                            first = time.perf_counter()
                        pieces.append(piece)
                        if on_token:
                            on_token(piece)
                    if deadline and time.perf_counter() > deadline:
                        raise ModelTimeout(f"generation stopped after {timeout_s:g} s", "".join(pieces))
            finally:
                stream.close()
            total = time.perf_counter() - started
            return Reply("".join(pieces), {
                "ttft_s": (first or time.perf_counter()) - started,
                "total_s": total,
                "completion_chunks": n,
                "context_tokens": float(llama.n_tokens),
                "cached_tokens": float(before),
            })

    def answer(self, messages: Messages, form: AnswerForm | dict[str, Any], on_token: OnToken | None = None,
               timeout_s: float | None = None) -> Reply:
        """The reply to ``messages`` in the shape of ``form`` (an ``AnswerForm`` or its dict): see ``decoding.py``."""
        form = form if isinstance(form, AnswerForm) else AnswerForm.from_dict(form)
        with self._lock:
            llama = self.load()
            self.calls += 1
            started = time.perf_counter()
            vocabulary = self.vocabulary()
            tokens = llama.tokenize(self._formatter(llama)(messages=messages).prompt.encode(), add_bos=True, special=True)
            decoder = FormDecoder(llama, vocabulary, Sampling(self.temperature, seed=self.seed), on_token,
                                  started + timeout_s if timeout_s else None, self.threads, started)
            try:
                decoder.prompt(tokens)
                text = decoder.answer(form)
            except ModelTimeout as exc:
                raise ModelTimeout(f"generation stopped after {timeout_s:g} s", exc.partial) from None
            except (ValueError, RuntimeError) as exc:  # a prompt longer than the context, a failed decode
                raise BackendError(f"llama.cpp: {exc}") from None
            s = decoder.stats
            return Reply(text, {
                "ttft_s": s.get("first_text_s", s.get("total_s", 0.0)),
                "prompt_s": s.get("prompt_s", 0.0),
                "total_s": time.perf_counter() - started,
                "completion_chunks": s.get("answer_tokens", 0.0),  # the answer's tokens: written, chosen and given
                "passes": s.get("passes", 0.0),  # forward passes after the prompt's (each costs about one token)
                "context_tokens": s.get("prompt_tokens", 0.0) + s.get("answer_tokens", 0.0),
                "cached_tokens": s.get("cached_tokens", 0.0),
                "threads_batch": s.get("threads_batch", 0.0),
                "threads": s.get("threads", 0.0),  # generation threads, averaged over the passes
            })


def _guarded(stream: Any) -> Any:
    """llama-cpp-python raises ValueError/RuntimeError (prompt longer than the context, decode failure): make them BackendError."""
    try:
        yield from stream
    except (ValueError, RuntimeError) as exc:
        raise BackendError(f"llama.cpp: {exc}") from None


class OpenAIBackend(LLMBackend):
    """An OpenAI-compatible chat endpoint (llama-server, vLLM, Ollama), streamed over SSE with the stdlib.

    A server takes a JSON schema and stop strings, but no prefill and no grammar: the protocol's defaults say so."""

    def __init__(self, base_url: str, model: str = "qwen2.5-1.5b-instruct", api_key: str | None = None,
                 temperature: float = 0.2, connect_timeout_s: float = 10.0):
        self.base_url = base_url.rstrip("/")
        if not self.base_url.endswith("/v1"):
            self.base_url += "/v1"
        self.model = model
        self.name = f"{model}@{self.base_url}"
        self.api_key = api_key if api_key is not None else os.environ.get("FACTORY_COPILOT_OPENAI_KEY")
        self.temperature = temperature
        self.connect_timeout_s = connect_timeout_s
        self._lock = threading.Lock()  # the server queues too, but one request at a time keeps latency honest
        self.calls = 0

    def stats(self) -> dict[str, Any]:
        return {"calls": self.calls}

    def chat(self, messages: Messages, schema: dict | None = None, max_tokens: int = 512,
             on_token: OnToken | None = None, timeout_s: float | None = None, prefill: str = "",
             stop: list[str] | None = None, grammar: str | None = None) -> Reply:
        if prefill or grammar:
            raise BackendError(f"{self.base_url}: an OpenAI-compatible server takes no prefill and no grammar")
        body: dict[str, Any] = {
            "model": self.model, "messages": messages, "max_tokens": max_tokens,
            "temperature": self.temperature, "stream": True,
        }
        if stop:
            body["stop"] = list(stop)
        if schema is not None:
            body["response_format"] = {"type": "json_schema", "json_schema": {"name": "diagnosis", "schema": schema}}
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(f"{self.base_url}/chat/completions", json.dumps(body).encode(), headers)
        with self._lock:
            self.calls += 1
            deadline = time.monotonic() + timeout_s if timeout_s else None
            read_timeout = min(self.connect_timeout_s, timeout_s) if timeout_s else self.connect_timeout_s
            try:
                response = urllib.request.urlopen(request, timeout=max(read_timeout, 0.1))
            except urllib.error.HTTPError as exc:
                detail = exc.read(300).decode(errors="replace")
                raise BackendError(f"{self.base_url} answered HTTP {exc.code}: {detail}") from None
            except (urllib.error.URLError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                raise ModelUnavailable(f"cannot reach {self.base_url}: {reason}") from None
            pieces: list[str] = []
            try:
                with response:
                    for raw in response:
                        if deadline and time.monotonic() > deadline:
                            raise ModelTimeout(f"generation stopped after {timeout_s:g} s", "".join(pieces))
                        line = raw.decode("utf-8", errors="replace").strip()
                        if not line.startswith("data:"):
                            continue  # SSE comments, event names and keep-alives
                        data = line[5:].strip()
                        if data == "[DONE]":
                            break
                        try:
                            chunk = json.loads(data)
                        except json.JSONDecodeError:
                            raise BackendError(f"{self.base_url} sent an unreadable stream chunk: {data[:80]!r}") from None
                        if "error" in chunk:
                            raise BackendError(f"{self.base_url}: {chunk['error']}")
                        choices = chunk.get("choices") or [{}]
                        piece = (choices[0].get("delta") or {}).get("content") or ""
                        if piece:
                            pieces.append(piece)
                            if on_token:
                                on_token(piece)
            except TimeoutError:
                raise ModelTimeout(f"{self.base_url} sent nothing for {read_timeout:g} s", "".join(pieces)) from None
            return Reply("".join(pieces))
