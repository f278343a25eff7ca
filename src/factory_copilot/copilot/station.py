"""The copilot station: for each alarm, a runbook diagnosis at once, then the model's when it arrives.

Design (the alarm and the dashboard never wait on the model):
1. an alarm comes in; the evidence pack is built from the line file, the recent
   readings (``observe``), the runbooks and past incidents;
2. the deterministic runbook diagnosis is emitted immediately (milliseconds);
3. the model diagnosis is queued to one model worker; its text streams token by
   token to listeners; when it completes and passes validation it is emitted as
   a second Diagnosis for the same alarm (source "model"), otherwise a runbook
   diagnosis with ``fallback_reason`` saying why (no model, unavailable, timeout,
   invalid output) is emitted instead.
Follow-up questions (``ask``) are answered against the same pack with a
conversation history per alarm.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import AsyncIterator, Callable

from factory_copilot.plumbing.buffer import Buffer
from factory_copilot.catalogue import Fault, load_faults
from factory_copilot.config import LineConfig
from factory_copilot.copilot.backends import BackendError, LLMBackend, ModelTimeout
from factory_copilot.copilot.diagnosis import InvalidModelOutput, diagnosis_schema, model_diagnosis, runbook_diagnosis
from factory_copilot.copilot.evidence import EvidencePack, IncidentMemory, SignalHistory, build_evidence
from factory_copilot.copilot.prompt import diagnosis_messages, question_messages, system_prompt
from factory_copilot.copilot.runbooks import RunbookLibrary, load_runbooks
from factory_copilot.records import Alarm, AlarmEvent, AnswerChunk, Diagnosis, DiagnosisChunk, Question, Reading, Turn

log = logging.getLogger(__name__)

TokenSink = Callable[[str], None]
# alarm events that deserve an explanation; acknowledgements and clearings do not
TIMEOUT_GRACE_S = 1.0  # how long past its timeout a model call may take to stop by itself
EXPLAIN_EVENTS = ("raised", "realarm", "reclassified")  # a new fault name deserves a new diagnosis


class TokenStream:
    """An async iterator of the model's text pieces; pass it as ``on_token`` and ``async for`` over it."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        self.text = ""

    def __call__(self, piece: str) -> None:
        self.text += piece
        self._queue.put_nowait(piece)

    def close(self) -> None:
        self._queue.put_nowait(None)

    def __aiter__(self) -> "TokenStream":
        return self

    async def __anext__(self) -> str:
        piece = await self._queue.get()
        if piece is None:
            raise StopAsyncIteration
        return piece


class Copilot:
    """The station: evidence per alarm, the runbook diagnosis at once, the model's after, and follow-up questions.

    ``backend`` None means runbook explanations only. ``memory`` supplies similar past incidents
    (the store implements it). ``schema`` defaults to ``diagnosis_schema`` over this plant's faults,
    signals and runbook passages.
    """

    def __init__(
        self,
        line: LineConfig,
        library: RunbookLibrary | None = None,
        backend: LLMBackend | None = None,
        memory: IncidentMemory | None = None,
        history: SignalHistory | None = None,
        faults: dict[str, Fault] | None = None,
        timeout_s: float = 120.0,
        max_tokens: int = 600,
        schema: dict | None = None,
        keep_alarms: int = 200,
        *,
        alarms: Buffer[AlarmEvent | Alarm] | None = None,
        readings: Buffer[Reading] | None = None,
        questions: Buffer[Question] | None = None,
        diagnoses: Buffer[Diagnosis] | None = None,
        chunks: Buffer[DiagnosisChunk] | None = None,
        answers: Buffer[AnswerChunk] | None = None,
        turns: Buffer[Turn] | None = None,
        max_pending: int = 16,
    ):
        self.line = line
        self.library = library if library is not None else load_runbooks()
        self.backend = backend
        self.memory = memory
        self.history = history or SignalHistory()
        self.faults = faults if faults is not None else load_faults()
        self.timeout_s = timeout_s
        self.max_tokens = max_tokens
        self.schema = schema or diagnosis_schema(
            faults=list(self.faults),
            signals=line.signal_keys(),
            refs=[p.id for p in self.library.passages],
        )
        self.system = system_prompt(line.site, line.line, self.faults, self.library)
        self.keep_alarms = keep_alarms
        self.alarms, self.readings, self.questions = alarms, readings, questions
        self.diagnoses, self.chunks, self.answers, self.turns = diagnoses, chunks, answers, turns
        self.max_pending = max_pending
        self._packs: OrderedDict[str, EvidencePack] = OrderedDict()
        self._turns: dict[str, list[Turn]] = {}
        self.counts = {"runbook": 0, "model": 0, "fallback": 0, "dropped_citations": 0, "questions": 0}

    def stats(self) -> dict[str, int]:
        """Diagnoses by source, fallbacks, dropped citations, questions answered."""
        return dict(self.counts)

    def close(self) -> None:
        """Stop the model's worker process, if there is one (at shutdown)."""
        close_model = getattr(self.backend, "close", None)
        if close_model:
            close_model()

    # ---- input -------------------------------------------------------------------------------------------

    def observe(self, reading: Reading) -> None:
        self.history.observe(reading)

    def evidence(self, alarm: Alarm) -> EvidencePack:
        """Build (and remember, for follow-up questions) the evidence pack for an alarm."""
        pack = build_evidence(alarm, self.line, self.history, self.library, self.memory, self.faults)
        self._packs[alarm.alarm_id] = pack
        self._packs.move_to_end(alarm.alarm_id)
        while len(self._packs) > self.keep_alarms:
            old, _ = self._packs.popitem(last=False)
            self._turns.pop(old, None)
        return pack

    def pack(self, alarm_id: str) -> EvidencePack | None:
        return self._packs.get(alarm_id)

    # ---- diagnoses -------------------------------------------------------------------------------------------

    def explain_now(self, alarm: Alarm, reason: str | None = None) -> Diagnosis:
        """The runbook diagnosis, synchronously: what the operator sees the moment the alarm is raised."""
        started = time.perf_counter()
        d = runbook_diagnosis(self.evidence(alarm), self.library, reason, self.faults)
        d.latency_s = time.perf_counter() - started
        self.counts["runbook"] += 1
        return d

    async def explain(self, alarm: Alarm, on_token: TokenSink | None = None) -> AsyncIterator[Diagnosis]:
        """Yield the runbook diagnosis at once, then the model's (or a runbook one with the fallback reason)."""
        first = self.explain_now(alarm)
        yield first
        if self.backend is not None:
            yield await self._model_diagnosis(alarm.alarm_id, on_token)

    async def diagnose(self, alarm: Alarm, on_token: TokenSink | None = None) -> Diagnosis:
        """The best diagnosis this copilot can give: the model's if it works, else the runbook's with the reason."""
        if self.backend is None:
            return self.explain_now(alarm, reason="no model configured")
        self.evidence(alarm)
        return await self._model_diagnosis(alarm.alarm_id, on_token)

    async def _model_diagnosis(self, alarm_id: str, on_token: TokenSink | None) -> Diagnosis:
        pack = self._packs[alarm_id]
        started = time.perf_counter()
        try:
            text = await self._generate(diagnosis_messages(self.system, pack), self.schema, self.max_tokens, on_token)
            d = model_diagnosis(text, pack, self.library, getattr(self.backend, "name", None), self.faults)
            self.counts["model"] += 1
            self.counts["dropped_citations"] += d.dropped_citations
            if d.dropped_citations:
                log.info("alarm %s: %d citations not in the evidence pack were dropped", alarm_id, d.dropped_citations)
        except ModelTimeout as exc:
            d = self._fallback(pack, f"timeout: {exc}")
        except BackendError as exc:
            d = self._fallback(pack, f"{exc.reason}: {exc}")
        except InvalidModelOutput as exc:
            d = self._fallback(pack, f"invalid output: {exc}")
        except Exception as exc:  # a backend bug must cost the model's explanation, never the alarm's
            log.exception("alarm %s: model backend failed", alarm_id)
            d = self._fallback(pack, f"backend error: {type(exc).__name__}: {exc}")
        d.latency_s = time.perf_counter() - started
        return d

    def _fallback(self, pack: EvidencePack, reason: str) -> Diagnosis:
        self.counts["fallback"] += 1
        log.warning("alarm %s: runbook diagnosis instead of the model's (%s)", pack.alarm_id, reason)
        return runbook_diagnosis(pack, self.library, reason, self.faults)

    async def _generate(self, messages: list[dict[str, str]], schema: dict | None, max_tokens: int,
                        on_token: TokenSink | None) -> str:
        """Run the blocking backend call in a worker thread; token callbacks come back on the event loop."""
        loop = asyncio.get_running_loop()
        relay = (lambda piece: loop.call_soon_threadsafe(on_token, piece)) if on_token else None
        assert self.backend is not None
        call = asyncio.ensure_future(
            asyncio.to_thread(self.backend.chat, messages, schema, max_tokens, relay, self.timeout_s))
        # a call abandoned below (timeout, or the station stopping) ends later with an error nobody awaits: expected
        call.add_done_callback(lambda f: f.cancelled() or f.exception())
        try:
            # the backend checks its deadline between tokens only; prompt processing and grammar set-up can
            # overrun it on a busy CPU, so the caller stops waiting here (the worker ends at its next token)
            return await asyncio.wait_for(asyncio.shield(call), self.timeout_s + TIMEOUT_GRACE_S)
        except asyncio.TimeoutError:
            raise ModelTimeout(f"no answer within {self.timeout_s:g} s") from None

    async def warm_up(self) -> bool:
        """Load the model and process the fixed prompt prefix now, so the first alarm finds it in the KV cache."""
        if self.backend is None:
            return False
        started = time.perf_counter()
        try:
            await self._generate([{"role": "system", "content": self.system}, {"role": "user", "content": "ready?"}],
                                 None, 1, None)
        except Exception as exc:  # the alarms will report the same problem with their fallback reason
            log.warning("copilot warm-up failed: %s", exc)
            return False
        log.info("copilot model warm: fixed prompt prefix cached in %.1f s", time.perf_counter() - started)
        return True

    # ---- follow-up questions ---------------------------------------------------------------------------------

    def conversation(self, alarm_id: str) -> list[Turn]:
        return list(self._turns.get(alarm_id, []))

    async def ask(self, alarm_id: str, question: str, actor: str | None = None, request_id: str | None = None,
                  on_token: TokenSink | None = None) -> Turn:
        """Answer an operator's question about an alarm, against its evidence pack and the conversation so far."""
        pack = self._packs.get(alarm_id)
        if pack is None:
            raise KeyError(f"no evidence for alarm {alarm_id!r}: the copilot has not seen it (or forgot it)")
        turns = self._turns.setdefault(alarm_id, [])
        history = list(turns)
        turns.append(Turn(alarm_id, "operator", question, actor=actor, request_id=request_id))
        self.counts["questions"] += 1
        answer, source = None, "runbook"
        if self.backend is not None:
            try:
                text = await self._generate(question_messages(self.system, pack, question, history), None, 200, on_token)
                answer, source = text.strip() or None, "model"
            except BackendError as exc:
                log.warning("alarm %s: question answered from the runbooks (%s: %s)", alarm_id, exc.reason, exc)
        if not answer:
            answer, source = self._runbook_answer(pack, question), "runbook"
            if on_token:
                on_token(answer)
        turn = Turn(alarm_id, "copilot", answer, request_id=request_id, source=source)
        turns.append(turn)
        return turn

    def _runbook_answer(self, pack: EvidencePack, question: str) -> str:
        """Without a model: the runbook passages closest to the question, for this alarm's runbooks first."""
        hits = self.library.search(question + " " + pack.asset, k=6)
        own = [h for h in hits if h[0].runbook_id in pack.runbook_ids()] or hits
        if not own:
            return "No runbook passage matches the question; ask maintenance."
        p = own[0][0]
        lines = p.items[:3] or [p.text[:300]]
        mentioned = [s for s in pack.signals if s.key in question or s.key.split(".")[-1] in question]
        facts = "; ".join(f"{s.key} is {s.value:.4g} {s.unit} ({s.direction}, normal {s.normal[0]:g}-{s.normal[1]:g})"
                          for s in mentioned if s.value is not None)
        return (f"{facts}. " if facts else "") + f"From {p.id}: " + " ".join(lines)

    # ---- the station loop ---------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Explain alarms until ``stop``: runbook diagnosis out at once, the model's later (one worker, bounded queue);
        answer questions; keep the recent readings each evidence pack is built from."""
        if self.alarms is None or self.diagnoses is None:
            raise RuntimeError("Copilot.run needs its alarms and diagnoses buffers")
        pending: asyncio.Queue[str] = asyncio.Queue(self.max_pending)
        alarms, diagnoses, chunks = self.alarms, self.diagnoses, self.chunks

        async def take_readings(readings: Buffer[Reading]) -> None:
            while True:
                self.observe(await readings.get())

        async def take_alarms() -> None:
            while True:
                item = await alarms.get()
                alarm = item.alarm if isinstance(item, AlarmEvent) else item
                if isinstance(item, AlarmEvent) and item.event not in EXPLAIN_EVENTS:
                    continue
                try:
                    diagnoses.offer(self.explain_now(alarm))
                except Exception:  # one alarm we cannot explain must not stop the others
                    log.exception("alarm %s: could not build a diagnosis", alarm.alarm_id)
                    continue
                if self.backend is None:
                    continue
                try:
                    pending.put_nowait(alarm.alarm_id)
                except asyncio.QueueFull:
                    log.warning("alarm %s: model queue full (%d), runbook diagnosis only", alarm.alarm_id, self.max_pending)

        async def model_worker() -> None:
            await self.warm_up()  # alarms queue meanwhile; their runbook diagnoses go out regardless
            while True:
                alarm_id = await pending.get()
                sink = (lambda piece, a=alarm_id: chunks.offer(DiagnosisChunk(a, piece))) if chunks is not None else None
                d = await self._model_diagnosis(alarm_id, sink)
                if chunks is not None:
                    chunks.offer(DiagnosisChunk(alarm_id, "", True))
                diagnoses.offer(d)

        async def take_questions(questions: Buffer[Question]) -> None:
            while True:
                await self._answer(await questions.get())

        jobs = [take_alarms(), model_worker()]
        if self.readings is not None:
            jobs.append(take_readings(self.readings))
        if self.questions is not None:
            jobs.append(take_questions(self.questions))
        tasks = [asyncio.create_task(job) for job in jobs]
        try:
            if stop is None:
                await asyncio.gather(*tasks)
            else:
                await stop.wait()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _answer(self, q: Question) -> None:
        """One question from the dashboard: its answer streamed as chunks, the last with the whole text."""
        answers = self.answers

        def sink(piece: str) -> None:
            if answers is not None:
                answers.offer(AnswerChunk(q.request_id, q.alarm_id, piece))

        try:
            turn = await self.ask(q.alarm_id, q.question, q.actor, q.request_id, on_token=sink)
        except KeyError as exc:
            if answers is not None:
                answers.offer(AnswerChunk(q.request_id, q.alarm_id, "", True, full_text=str(exc.args[0])))
            return
        if answers is not None:
            answers.offer(AnswerChunk(q.request_id, q.alarm_id, "", True, full_text=turn.text))
        if self.turns is not None:
            for t in self.conversation(q.alarm_id)[-2:]:
                self.turns.offer(t)
