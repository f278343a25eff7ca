"""The local model in a child process, so a llama.cpp crash costs one diagnosis, never the service.

llama.cpp is native code: an illegal instruction (a build for another CPU, AMX in a VM),
an out-of-memory kill or a stuck prompt would otherwise take the collectors, the alarms
and the publisher down with it. ``LocalModel`` is the same ``LLMBackend`` as the in-process
``LlamaCppBackend`` and runs that backend in a child process (``serve()`` below), talking JSON
lines over its stdin/stdout:

    -> {"messages": [...], "schema": {...} | null, "max_tokens": 600, "timeout_s": 120}
    -> {"messages": [...], "answer": {AnswerForm}, "timeout_s": 120}     (the diagnosis' form: see decoding.py)
    -> {"warm": "<system prompt>", "user_prefix": "..."}
    <- {"token": "..."} ...  then  {"done": true, "text": "...", "stats": {...}}
                             or    {"error": "timeout" | "unavailable" | "backend", "message": "...", "partial": "..."}

A child that dies is reported by its signal, in words, with what to do about it, and the
next call starts a new one; after ``max_crashes`` the model is given up for good (runbook
diagnoses only). A child that stops answering past its deadline is killed and restarted.
The parent never imports llama_cpp, and its Python thread only relays tokens, so the
pipeline keeps its core while the model writes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, NoReturn

from factory_copilot.copilot.backends import LlamaCppBackend, OnePerModelFile
from factory_copilot.copilot.language_model import (AnswerForm, BackendError, LLMBackend, Messages, ModelTimeout,
                                                    ModelUnavailable, OnToken, Reply)

log = logging.getLogger(__name__)

STUCK_GRACE_S = 5.0  # past its deadline a child gets this long to answer before it is killed
AMX_OFF = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
CRASH_ADVICE = {
    signal.SIGILL: (
        "illegal instruction: this llama-cpp-python build uses CPU instructions this machine refuses (AMX in a VM, "
        f"or a wheel built for another CPU); rebuild it: CFLAGS='{AMX_OFF}' CXXFLAGS='{AMX_OFF}' pip install "
        "--force-reinstall --no-cache-dir --no-deps llama-cpp-python (scripts/bootstrap.sh does this)"),
    signal.SIGKILL: "killed, most likely out of memory: choose a smaller model or a smaller context (n_ctx)",
    signal.SIGSEGV: "segmentation fault in llama.cpp: check the model file (sha256) and the llama-cpp-python version",
    signal.SIGBUS: "bus error: the model file changed or its disk went away while it was mapped",
}
_EOF = object()


def crash_text(returncode: int | None) -> str:
    """What a child's exit status means, for the log line and the diagnosis' fallback reason."""
    if returncode is None:
        return "stopped answering"
    if returncode < 0:
        sig = signal.Signals(-returncode)
        return f"died of {sig.name} ({CRASH_ADVICE.get(sig, signal.strsignal(sig) or 'signal')})"
    return f"exited with status {returncode}"


class LocalModel(OnePerModelFile, LLMBackend):
    """A GGUF model served by a child process; see the module docstring."""

    supports_prefill = True
    supports_forms = True

    def __init__(self, model_path: str | Path, *, n_ctx: int = 4096, n_threads: int | None = None,
                 n_gpu_layers: int = 0, seed: int = 0, max_crashes: int = 3, start_timeout_s: float = 300.0,
                 state_dir: str | None = None, n_threads_batch: int | None = None, flash_attn: bool = False):
        self.model_path = str(model_path)
        self.name = Path(self.model_path).name
        self.settings = {"n_ctx": n_ctx, "n_threads": n_threads, "n_gpu_layers": n_gpu_layers, "seed": seed,
                         "state_dir": str(state_dir) if state_dir else None, "n_threads_batch": n_threads_batch,
                         "flash_attn": 1 if flash_attn else None}
        self.max_crashes = max_crashes
        self.start_timeout_s = start_timeout_s
        self.calls = 0
        self.crashes = 0
        self._proc: subprocess.Popen | None = None
        self._lines: queue.Queue = queue.Queue()
        self._failed: str | None = None
        self._closing = False
        self._lock = threading.Lock()  # one child, one generation at a time; the others wait their turn

    def stats(self) -> dict[str, Any]:
        return {"calls": self.calls, "crashes": self.crashes}  # a crash is counted in /health, not only logged

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc and self._proc.poll() is None else None

    # ---- the child's life ----------------------------------------------------------------------------------

    def _start(self) -> None:
        if not Path(self.model_path).is_file():
            self._give_up(f"cannot load model {self.model_path}: file not found")
        # -c, not -m: the package imports this module, and runpy would warn about running it a second time
        cmd = [sys.executable, "-c", "import sys; from factory_copilot.copilot.worker import serve; sys.exit(serve())",
               self.model_path]
        for key, value in self.settings.items():
            if value is not None:
                cmd += [f"--{key.replace('_', '-')}", str(value)]
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self._lines = queue.Queue()
        threading.Thread(target=self._read, args=(self._proc, self._lines), name="model-worker-reader",
                         daemon=True).start()
        ready = self._next(time.monotonic() + self.start_timeout_s)
        if ready is None:
            self._kill()
            raise ModelUnavailable(f"model worker for {self.name} did not start within {self.start_timeout_s:g} s")
        if ready is _EOF:
            self._crashed("while loading the model")
        if "error" in ready:
            self._give_up(ready["message"])
        log.info("copilot model %s serving in worker pid %d (loaded in %.2f s, threads: %s)", self.name,
                 self._proc.pid, ready.get("load_s", 0.0), ready.get("threads"))

    @staticmethod
    def _read(proc: subprocess.Popen, lines: queue.Queue) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            try:
                lines.put(json.loads(raw))
            except json.JSONDecodeError:
                log.warning("model worker wrote a line that is not JSON: %.120r", raw)
        lines.put(_EOF)

    def _next(self, deadline: float | None) -> Any:
        """The child's next message, ``_EOF`` when it ended, None past ``deadline``."""
        try:
            return self._lines.get(timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            return None

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def _crash(self, during: str) -> str:
        """Count and log the child's death; past ``max_crashes`` the model is given up. Returns what happened."""
        proc, self._proc = self._proc, None
        rc = proc.wait() if proc is not None else None
        self.crashes += 1
        what = f"model worker for {self.name} {crash_text(rc)} {during}"
        if self.crashes >= self.max_crashes:
            self._give_up(f"{what}; gave up after {self.crashes} crash{'es' if self.crashes > 1 else ''}")
        log.error("%s; the next alarm starts a new one (%d of %d crashes)", what, self.crashes, self.max_crashes)
        return what

    def _crashed(self, during: str) -> NoReturn:
        if self._closing:
            self._proc = None
            raise ModelUnavailable(f"model worker for {self.name} stopped: the copilot is shutting down")
        raise ModelUnavailable(self._crash(during))

    def _give_up(self, reason: str) -> NoReturn:
        self._failed = reason
        self._kill()
        log.error("copilot model unavailable, runbook explanations only: %s", reason)
        raise ModelUnavailable(reason)

    def close(self) -> None:
        """End the child now, even mid-answer: shutting down must not wait for the model (the call ends unavailable).

        Without close() the child still ends by itself when this process goes and its stdin closes.
        """
        self._closing = True
        proc = self._proc  # not under the lock: a call in progress holds it
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    # ---- one call ------------------------------------------------------------------------------------------

    def warm(self, system: str, user_prefix: str = "", timeout_s: float | None = 600.0) -> Reply:
        """Have the fixed prompt prefix warm in the child (restored from disk when it was saved before)."""
        return self._call({"warm": system, "user_prefix": user_prefix, "timeout_s": timeout_s}, None, timeout_s)

    def answer(self, messages: Messages, form: AnswerForm | dict[str, Any], on_token: OnToken | None = None,
               timeout_s: float | None = None) -> Reply:
        """The reply in the shape of ``form`` (``LlamaCppBackend.answer`` in the child)."""
        form = form.to_dict() if isinstance(form, AnswerForm) else form
        return self._call({"messages": messages, "answer": form, "timeout_s": timeout_s}, on_token, timeout_s)

    def chat(self, messages: Messages, schema: dict | None = None, max_tokens: int = 512,
             on_token: OnToken | None = None, timeout_s: float | None = None, prefill: str = "",
             stop: list[str] | None = None, grammar: str | None = None) -> Reply:
        request = {"messages": messages, "schema": schema, "max_tokens": max_tokens, "timeout_s": timeout_s,
                   "prefill": prefill, "stop": stop, "grammar": grammar}
        return self._call(request, on_token, timeout_s)

    def _call(self, request: dict[str, Any], on_token: OnToken | None, timeout_s: float | None) -> Reply:
        with self._lock:
            if self._failed:
                raise ModelUnavailable(self._failed)
            if self._proc is not None and self._proc.poll() is not None and not self._closing:
                self._crash("between calls")  # said in the log; a new worker takes this call
            if self._proc is None or self._proc.poll() is not None:
                self._closing = False
                self._start()
            assert self._proc is not None and self._proc.stdin is not None
            self.calls += 1
            try:
                self._proc.stdin.write(json.dumps(request) + "\n")
                self._proc.stdin.flush()
            except (BrokenPipeError, OSError):
                self._crashed("before the request")
            deadline = time.monotonic() + timeout_s + STUCK_GRACE_S if timeout_s else None
            pieces: list[str] = []
            while True:
                msg = self._next(deadline)
                if msg is None:
                    self._kill()  # stuck in prompt processing: stop it, so the CPU is free again
                    log.warning("model worker for %s killed: no answer %.0f s past its deadline", self.name,
                                STUCK_GRACE_S)
                    raise ModelTimeout(f"no answer within {timeout_s:g} s", "".join(pieces))
                if msg is _EOF:
                    self._crashed(f"after {len(pieces)} tokens")
                if "token" in msg:
                    pieces.append(msg["token"])
                    if on_token:
                        on_token(msg["token"])
                elif msg.get("done"):
                    return Reply(msg["text"], msg.get("stats", {}))
                elif msg.get("error") == "timeout":
                    raise ModelTimeout(msg["message"], msg.get("partial", ""))
                elif msg.get("error") == "unavailable":
                    self._give_up(msg["message"])
                elif "error" in msg:
                    raise BackendError(msg["message"])


# ---- the child ----------------------------------------------------------------------------------------------


def serve(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="factory-copilot model worker", description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--n-ctx", type=int, default=4096)
    ap.add_argument("--n-threads", type=int)
    ap.add_argument("--n-gpu-layers", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--state-dir", help="where the warm prompt prefix is kept across restarts")
    ap.add_argument("--n-threads-batch", type=int, help="prompt threads (default: the cores the machine leaves idle)")
    ap.add_argument("--flash-attn", type=int, default=0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)-7s %(name)s[worker]: %(message)s")
    os.nice(5)  # when the CPU is short, the collectors, detector and alarms go first: an alarm never waits on the model
    # the protocol gets its own copy of stdout; whatever native code prints goes to stderr instead
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)

    def say(msg: dict[str, Any]) -> None:
        out.write(json.dumps(msg) + "\n")

    backend = LlamaCppBackend(args.model, n_ctx=args.n_ctx, n_threads=args.n_threads, n_gpu_layers=args.n_gpu_layers,
                              seed=args.seed, state_dir=args.state_dir, n_threads_batch=args.n_threads_batch,
                              flash_attn=bool(args.flash_attn))
    started = time.perf_counter()
    try:
        backend.load()
    except ModelUnavailable as exc:
        say({"error": "unavailable", "message": str(exc)})
        return 1
    say({"ready": True, "load_s": round(time.perf_counter() - started, 3), "threads": backend.threads_text()})
    for line in sys.stdin:
        try:
            req = json.loads(line)
            if "warm" in req:
                reply = backend.warm(req["warm"], req.get("user_prefix") or "")
            elif "answer" in req:
                reply = backend.answer(req["messages"], req["answer"], lambda piece: say({"token": piece}),
                                       req.get("timeout_s"))
            else:
                reply = backend.chat(req["messages"], req.get("schema"), req.get("max_tokens", 512),
                                     lambda piece: say({"token": piece}), req.get("timeout_s"),
                                     req.get("prefill") or "", req.get("stop"), req.get("grammar"))
            say({"done": True, "text": reply.text, "stats": reply.stats})
        except ModelTimeout as exc:
            say({"error": "timeout", "message": str(exc), "partial": exc.partial})
        except ModelUnavailable as exc:
            say({"error": "unavailable", "message": str(exc)})
        except Exception as exc:  # one bad request must not end the worker
            say({"error": "backend", "message": f"{type(exc).__name__}: {exc}"})
    return 0
