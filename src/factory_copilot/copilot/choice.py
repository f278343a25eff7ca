"""Which language model the copilot uses: the line's settings (or FACTORY_COPILOT_* variables) to a backend, or none:
a GGUF file, an OpenAI-compatible server, or the site's pool of explainers."""

from __future__ import annotations

import os
from pathlib import Path

from factory_copilot.config import LineConfig
from factory_copilot.copilot.backends import OpenAIBackend
from factory_copilot.copilot.language_model import LLMBackend
from factory_copilot.copilot.worker import LocalModel


def backend_from_settings(model: str | None = None, openai_url: str | None = None, openai_model: str | None = None,
                          n_threads: int | None = None, n_ctx: int | None = None,
                          n_gpu_layers: int | None = None, state_dir: str | Path | None = None, *,
                          line: LineConfig | None = None) -> LLMBackend | None:
    """The backend chosen by arguments, else by FACTORY_COPILOT_* environment variables; None means runbook only.

    A GGUF file is served by a child process (``LocalModel``), so a crash in llama.cpp never stops the service.
    ``line``: a line file whose ``service.copilot.pool`` sends its calls to the site's explainers (``PoolBackend``).
    """
    pool = line.service.copilot.pool if line is not None else None
    if line is not None and pool is not None:
        from factory_copilot.copilot.pool import PoolBackend

        conn = pool.mqtt or line.mqtt
        assert conn is not None  # the line file's validation saw to it
        return PoolBackend(conn, pool.site or line.site, line.line, prefix=pool.prefix, lease_s=pool.lease_s,
                           retries=pool.retries, deadline_s=pool.deadline_s or line.service.copilot.timeout_s,
                           max_pending=pool.max_pending, forms=pool.forms)
    env = os.environ
    openai_url = openai_url or env.get("FACTORY_COPILOT_OPENAI_URL")
    if openai_url:
        return OpenAIBackend(openai_url, model=openai_model or env.get("FACTORY_COPILOT_OPENAI_MODEL", "qwen2.5-1.5b-instruct"))
    model = model or env.get("FACTORY_COPILOT_MODEL")
    if not model:
        return None
    return LocalModel.shared(
        model,
        n_threads=n_threads or int(env.get("FACTORY_COPILOT_THREADS", "0")) or None,
        n_ctx=n_ctx or int(env.get("FACTORY_COPILOT_CTX", "4096")),
        n_gpu_layers=n_gpu_layers if n_gpu_layers is not None else int(env.get("FACTORY_COPILOT_GPU_LAYERS", "0")),
        state_dir=str(state_dir) if state_dir else None,
        # prompt threads: unset or 0 = the cores the machine leaves idle at each prompt (see threads_for); the same
        # for FACTORY_COPILOT_THREADS, the generation threads
        n_threads_batch=int(env.get("FACTORY_COPILOT_BATCH_THREADS", "0")) or None,
    )
