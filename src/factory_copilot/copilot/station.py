"""The copilot station: for each alarm, a runbook diagnosis at once, then the model's when it arrives.

Design (the alarm and the dashboard never wait on the model):
1. an alarm comes in; the evidence pack is built from the line file, the recent
   readings (``observe``), the runbooks and past incidents;
2. the deterministic runbook diagnosis is emitted immediately (milliseconds);
3. the model diagnosis is queued to one model worker; its text streams token by
   token to listeners; when it completes and passes validation it is emitted as
   a second Diagnosis for the same alarm (origin "model"), otherwise a runbook
   diagnosis with ``fallback_reason`` saying why (no model, unavailable, timeout,
   invalid output) is emitted instead.
Follow-up questions (``ask``) are answered against the same pack with a
conversation history per alarm.

The model is one worker with one queue (``run``): an operator's question goes ahead of every diagnosis job
(its runbook answer goes out at once, the model's follows), a diagnosis job waits behind the others. What the
model would only repeat is not queued: a consequence folded under its root (the root's diagnosis covers it: it
gets one runbook diagnosis, for when the operator unfolds it), a re-alarm of the same situation within
``rediagnose_after_s`` of its last diagnosis, a second job for an alarm already waiting, and data-quality alarms
(lost data, stale or bad values, a sensor out of its range: the runbook's data-source diagnosis is all there is to
say). Each job's place, state and an estimate go out as ``ModelJob`` records while it waits and runs; a
diagnosis' ``latency_s`` counts from its alarm event, on the pipeline's clock.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

from factory_copilot.catalogue import Fault, faults_of
from factory_copilot.config import LineConfig
from factory_copilot.copilot.answers import runbook_answer
from factory_copilot.copilot.diagnosis import (DATA_SOURCE_KINDS, InvalidModelOutput, diagnosis_schema, model_diagnosis,
                                                runbook_diagnosis, with_steps)
from factory_copilot.copilot.evidence import EvidencePack, IncidentMemory, SignalHistory, build_evidence
from factory_copilot.copilot.language_model import (CALL_FOR, AnswerForm, BackendError, CallFor, LLMBackend, Messages,
                                                    ModelTimeout, Reply)
from factory_copilot.copilot.prompt import DATA_OPEN, diagnosis_messages, question_messages, system_prompt
from factory_copilot.copilot.runbooks import RunbookLibrary, runbooks_of
from factory_copilot.copilot.streams import SummaryStream, TokenSink
from factory_copilot.copilot.two_steps import two_step_answer
from factory_copilot.plumbing.buffer import Buffer
from factory_copilot.plumbing.logs import Throttled
from factory_copilot.plumbing.tasks import run_until
from factory_copilot.records import (Alarm, AlarmEvent, AnswerChunk, Diagnosis, DiagnosisChunk, ModelJob, Priority,
                                     Question, Reading, Turn)

log = logging.getLogger(__name__)

TIMEOUT_GRACE_S = 1.0  # how long past its timeout a model call may take to stop by itself
# alarm events that deserve an explanation; acknowledgements and clearings do not. A new fault name deserves a new
# diagnosis; a consequence let go from its root is a situation of its own
EXPLAIN_EVENTS = ("raised", "realarm", "reclassified", "ungrouped")
DIAGNOSIS_JOB, ANSWER_JOB = "diagnosis", "answer"
REDIAGNOSE_AFTER_S = 600.0  # a re-alarm of the same situation this soon after its diagnosis: that diagnosis stands
ANSWER_URGENCY = 5  # an operator waits: ahead of every diagnosis, at a pool of explainers too (``_urgency``)
ANNOUNCE_EVERY_S = 5.0  # waiting jobs' states go out again this often (not retained: a late subscriber catches up)


@dataclass(eq=False)
class _Job:
    """One job for the model: the diagnosis of an alarm, or the answer to a question."""

    kind: str
    alarm_id: str | None
    since: float  # the pipeline's clock: when the wait began
    question: Question | None = None
    pack: EvidencePack | None = None
    history: list[Turn] = field(default_factory=list)
    fallback: str | None = None  # the runbook's answer, out already; it stands if the model fails
    started: float | None = None  # perf_counter when the model took it


# one short sentence (the summary's character bound is the schema's); a model that has not closed it by then is cut.
# Every token is a forward pass (~0.16 CPU-seconds for the 1.5B on one thread): this bounds the answer's time
SUMMARY_TOKENS = 32


class Copilot:
    """The station: evidence per alarm, the runbook diagnosis at once, the model's after, and follow-up questions.

    ``backend`` None means runbook explanations only. ``memory`` supplies similar past incidents
    (the store implements it). ``faults`` and ``library`` default to the line's own catalogue and
    runbooks (``knowledge`` in the line file); a line without them gets evidence-only diagnoses.
    ``schema`` defaults to ``diagnosis_schema`` over this line's fault ids and runbook steps;
    ``constrained`` False lets the model write freely (the same validation applies); ``two_steps`` writes
    the summary freely and then the choices under a small grammar (``two_steps.py``); ``forms`` (the default)
    has a llama.cpp backend answer in the schema's form without a grammar (``decoding.py``).
    """

    # the records it takes off the line's bus and gives onto it (plumbing/bus.py)
    takes = (AlarmEvent, Reading, Question)
    gives = (Diagnosis, DiagnosisChunk, AnswerChunk, Turn, ModelJob)

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
        constrained: bool = True,
        two_steps: bool = False,
        forms: bool = True,
        *,
        alarms: Buffer[AlarmEvent | Alarm] | None = None,
        readings: Buffer[Reading] | None = None,
        questions: Buffer[Question] | None = None,
        diagnoses: Buffer[Diagnosis] | None = None,
        chunks: Buffer[DiagnosisChunk] | None = None,
        answers: Buffer[AnswerChunk] | None = None,
        turns: Buffer[Turn] | None = None,
        jobs: Buffer[ModelJob] | None = None,
        max_pending: int = 16,
        clock: Callable[[], float] = time.time,
        rediagnose_after_s: float = REDIAGNOSE_AFTER_S,
    ):
        self.line = line
        self.library = library if library is not None else runbooks_of(line)
        self.backend = backend
        self.memory = memory
        self.history = history or SignalHistory()
        self.faults = faults if faults is not None else faults_of(line)
        self.timeout_s = timeout_s
        self.max_tokens = max_tokens
        self.constrained = constrained
        # measured with bench/copilot.py: the two-step answer gives the first words ~1 s sooner but costs more in
        # all (its second call re-reads the summary it wrote), so one call under the schema is the default
        self.two_steps = two_steps
        # a backend that can (llama.cpp) answers in the form of the schema: the summary written, the ids chosen from a
        # token trie, the JSON given (decoding.py); measured with bench/copilot.py against the grammar: fewer passes
        self.forms = forms
        self.fixed_schema = schema is not None  # True: this schema as given for every alarm (no per-alarm step numbers)
        self.schema = schema or diagnosis_schema(faults=list(self.faults))
        self.system = system_prompt(line.site, line.line, self.faults, self.library, line.description,
                                    assets={a.id: a.name for a in line.assets}, usual_mode=line.production_mode)
        self.keep_alarms = keep_alarms
        self.alarms, self.readings, self.questions = alarms, readings, questions
        self.diagnoses, self.chunks, self.answers, self.turns = diagnoses, chunks, answers, turns
        self.jobs = jobs
        self.max_pending = max_pending
        self.clock = clock
        self.rediagnose_after_s = rediagnose_after_s
        self._packs: OrderedDict[str, EvidencePack] = OrderedDict()
        self._turns: dict[str, list[Turn]] = {}
        self.counts = {"runbook": 0, "model": 0, "fallback": 0, "dropped_citations": 0, "questions": 0,
                       "model_jobs": 0, "covered": 0, "dropped_jobs": 0, "incident_lookups_failed": 0}
        # the model's queue (run): waiting jobs in order, the one it works on, how long recent jobs took
        self._queue: list[_Job] = []
        self._running: _Job | None = None
        self._kick = asyncio.Event()
        self._took: dict[str, float] = {}
        self._warm = False
        self._model_lock = asyncio.Lock()  # the two-step answer's calls go back to back
        self._diagnosed: dict[str, tuple[float, str | None]] = {}  # alarm id -> (when, its fault name then)
        self.last_timing: dict[str, float] = {}  # the last model diagnosis: seconds to first words and to the end,
        # and what the backend measured of it
        self.warm_stats: dict[str, float] = {}  # what the backend measured of its warm-up (``restored``: from disk)
        self.last_text = ""
        self._log = Throttled(log, 30.0)

    def stats(self) -> dict[str, Any]:
        """Diagnoses by origin (model, runbook), fallbacks, dropped citations, questions answered; the model and its manifest."""
        return {**self.counts, "model_queue": len(self._queue), "model_busy": self._running is not None,
                "model_file": self.model_info()}  # ("model" counts the model's diagnoses)

    def model_info(self) -> dict[str, Any] | None:
        """Which model explains alarms, and the manifest it was verified with (``models pull``), for ``/health``."""
        if self.backend is None:
            return None
        from factory_copilot.copilot.model_files import manifest_for

        path = self.backend.model_path
        info = {"name": self.backend.name, "path": path, "constrained": self.constrained, "manifest": manifest_for(path)}
        counted = self.backend.stats()  # its calls; a child process' crashes; a pool's jobs, retries, duplicates
        return {**info, "backend": counted} if counted else info

    def close(self) -> None:
        """Stop the model's worker process, if there is one (at shutdown)."""
        if self.backend is not None:
            self.backend.close()

    # ---- input -------------------------------------------------------------------------------------------

    def observe(self, reading: Reading) -> None:
        self.history.observe(reading)

    def evidence(self, alarm: Alarm) -> EvidencePack:
        """Build (and remember, for follow-up questions) the evidence pack for an alarm."""
        return self._remember(build_evidence(alarm, self.line, self.history, self.library, self.faults, self.memory))

    async def gather(self, alarm: Alarm) -> EvidencePack:
        """``evidence``, built off the event loop: the memory (the store) reads a disk that a batch or a retention
        sweep may keep busy, the trends of every signal's window take ~20 ms of Python, and the collectors, alarms
        and publisher share this loop (issue 21). The thread reads a copy of the window, which the loop fills."""
        history = self.history.copy()
        pack = await asyncio.to_thread(build_evidence, alarm, self.line, history, self.library, self.faults, None)
        if self.memory is not None:
            fault_type = alarm.anomaly.fault_type if alarm.anomaly else None
            try:
                pack.incidents = await asyncio.to_thread(self.memory.similar, alarm.asset, fault_type,
                                                         [s.key for s in pack.signals])
            except Exception as exc:  # the diagnosis goes out without past incidents rather than not at all
                self.counts["incident_lookups_failed"] += 1
                self._log.error("incidents", "alarm %s: past incidents could not be looked up (%s: %s); explained "
                                "without them", alarm.alarm_id, type(exc).__name__, exc)
        return self._remember(pack)

    def _remember(self, pack: EvidencePack) -> EvidencePack:
        self._packs[pack.alarm_id] = pack
        self._packs.move_to_end(pack.alarm_id)
        while len(self._packs) > self.keep_alarms:
            old, _ = self._packs.popitem(last=False)
            self._turns.pop(old, None)
        return pack

    def pack(self, alarm_id: str) -> EvidencePack | None:
        return self._packs.get(alarm_id)

    # ---- diagnoses -------------------------------------------------------------------------------------------

    def explain_now(self, alarm: Alarm, reason: str | None = None, since: float | None = None,
                    pack: EvidencePack | None = None) -> Diagnosis:
        """The runbook diagnosis, synchronously: what the operator sees the moment the alarm is raised.

        ``since``: the alarm event's time (pipeline clock): ``latency_s`` counts from it (else from this call);
        ``pack``: the alarm's evidence, already gathered (``gather``), else built here."""
        started = time.perf_counter()
        d = runbook_diagnosis(pack or self.evidence(alarm), self.library, self.faults, reason)
        d.latency_s = time.perf_counter() - started if since is None else max(0.0, self.clock() - since)
        self.counts["runbook"] += 1
        self._diagnosed[alarm.alarm_id] = (self.clock(), _fault_of(alarm))
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

    def schema_for(self, pack: EvidencePack) -> dict:
        """The grammar of one alarm's answer: the plant's faults, and the numbers of the steps offered for it."""
        return self.schema if self.fixed_schema else with_steps(self.schema, pack.step_labels())

    async def _model_diagnosis(self, alarm_id: str, on_token: TokenSink | None) -> Diagnosis:
        """The model's diagnosis; ``on_token`` gets the summary's words as they are written (the rest is ids)."""
        assert self.backend is not None
        pack = self._packs[alarm_id]
        started = time.perf_counter()
        summary = SummaryStream(on_token)
        self.last_timing = {}
        try:
            if self.two_steps and self.constrained and not self.fixed_schema and self.backend.supports_prefill:
                # both steps back to back: another alarm's call in between would evict this one's prompt from the cache
                async with self._model_lock:
                    reply = await two_step_answer(self._generate, diagnosis_messages(self.system, pack),
                                                  list(self.faults), pack.step_labels(), summary, SUMMARY_TOKENS,
                                                  self.timeout_s)
            elif (self.forms and self.constrained and not self.fixed_schema and self.backend.supports_forms
                  and (form := self._form(pack)) is not None):
                # llama.cpp: the summary written, the ids chosen from a token trie, the JSON given (decoding.py)
                reply = await self._call(self.backend.answer, diagnosis_messages(self.system, pack), form, summary)
            else:  # one call under the schema (a server that takes a JSON schema), or free (constrained=False)
                reply = await self._generate(diagnosis_messages(self.system, pack),
                                             self.schema_for(pack) if self.constrained else None, self.max_tokens,
                                             summary)
            text = reply.text
            self.last_text = text  # what the model answered (with what was given it), for evaluation and tests
            self.last_timing = {"first_words_s": (summary.first_at or time.perf_counter()) - started,
                                "complete_s": time.perf_counter() - started, **reply.stats}
            d = model_diagnosis(text, pack, self.library, self.faults, self.backend.name)
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
        return runbook_diagnosis(pack, self.library, self.faults, reason)

    def _form(self, pack: EvidencePack) -> AnswerForm | None:
        """This alarm's answer as written, chosen and given parts; None if the schema is not of that shape."""
        try:
            return AnswerForm.from_schema(self.schema_for(pack), SUMMARY_TOKENS)
        except ValueError as exc:
            log.debug("diagnosis schema not usable as an answer form (%s): the grammar serves", exc)
            return None

    async def _generate(self, messages: Messages, schema: dict | None, max_tokens: int,
                        on_token: TokenSink | None, timeout_s: float | None = None, **extra: Any) -> Reply:
        """``backend.chat`` in a worker thread; token callbacks come back on the event loop."""
        assert self.backend is not None
        return await self._call(functools.partial(self.backend.chat, schema=schema, max_tokens=max_tokens, **extra),
                                messages, None, on_token, timeout_s)

    async def _call(self, method: Callable[..., Reply], messages: Messages, form: AnswerForm | None,
                    on_token: TokenSink | None, timeout_s: float | None = None) -> Reply:
        """Run a blocking backend call in a worker thread; token callbacks come back on the event loop."""
        loop = asyncio.get_running_loop()
        relay = (lambda piece: loop.call_soon_threadsafe(on_token, piece)) if on_token else None
        assert self.backend is not None
        timeout_s = self.timeout_s if timeout_s is None else max(0.1, timeout_s)
        args = (messages, form) if form is not None else (messages,)
        call = asyncio.ensure_future(asyncio.to_thread(functools.partial(method, *args, on_token=relay, timeout_s=timeout_s)))
        # a call abandoned below (timeout, or the station stopping) ends later with an error nobody awaits: expected
        call.add_done_callback(lambda f: f.cancelled() or f.exception())
        try:
            # the backend checks its deadline between tokens only; prompt processing and grammar set-up can
            # overrun it on a busy CPU, so the caller stops waiting here (the worker ends at its next token)
            return await asyncio.wait_for(asyncio.shield(call), timeout_s + TIMEOUT_GRACE_S)
        except asyncio.TimeoutError:
            raise ModelTimeout(f"no answer within {timeout_s:g} s") from None

    async def warm_up(self) -> bool:
        """Load the model and process the fixed prompt prefix now, so the first alarm finds it in the KV cache."""
        if self.backend is None:
            return False
        started = time.perf_counter()
        try:
            # the prefix reaches into the user message: every data block starts the same way (llama.cpp restores it
            # from disk when it was saved before; a server caches the system prompt)
            reply = await asyncio.to_thread(self.backend.warm, self.system, DATA_OPEN + "\n")
            self.warm_stats = dict(reply.stats)
            how = ("cached" if "restored" not in reply.stats else
                   "restored from disk" if reply.stats["restored"] else "computed and saved")
        except Exception as exc:  # the alarms will report the same problem with their fallback reason
            log.warning("copilot warm-up failed: %s", exc)
            return False
        log.info("copilot model warm: fixed prompt prefix %s in %.1f s", how, time.perf_counter() - started)
        return True

    # ---- follow-up questions ---------------------------------------------------------------------------------

    def conversation(self, alarm_id: str) -> list[Turn]:
        return list(self._turns.get(alarm_id, []))

    async def ask(self, alarm_id: str, question: str, actor: str | None = None, request_id: str | None = None,
                  on_token: TokenSink | None = None) -> Turn:
        """Answer an operator's question about an alarm, against its evidence pack and the conversation so far."""
        pack, history = self._open_question(alarm_id, question, actor, request_id)
        answer, origin = None, "runbook"
        if self.backend is not None:
            answer, origin = await self._model_answer(pack, question, history, on_token), "model"
        if not answer:
            answer, origin = runbook_answer(pack, question, self.library, self.faults), "runbook"
            if on_token:
                on_token(answer)
        return self._close_question(alarm_id, answer, origin, request_id)

    def _open_question(self, alarm_id: str, question: str, actor: str | None,
                       request_id: str | None) -> tuple[EvidencePack, list[Turn]]:
        pack = self._packs.get(alarm_id)
        if pack is None:
            raise KeyError(f"no evidence for alarm {alarm_id!r}: the copilot has not seen it (or forgot it)")
        turns = self._turns.setdefault(alarm_id, [])
        history = list(turns)
        turns.append(Turn(alarm_id, "operator", question, actor=actor, request_id=request_id))
        self.counts["questions"] += 1
        return pack, history

    async def _model_answer(self, pack: EvidencePack, question: str, history: list[Turn],
                            on_token: TokenSink | None) -> str | None:
        """The model's answer, or None when it could not give one (the runbook's stands)."""
        try:
            reply = await self._generate(question_messages(self.system, pack, question, history), None, 200, on_token)
        except BackendError as exc:
            log.warning("alarm %s: question answered from the runbooks (%s: %s)", pack.alarm_id, exc.reason, exc)
            return None
        return reply.text.strip() or None

    def _close_question(self, alarm_id: str, answer: str, origin: str, request_id: str | None) -> Turn:
        turn = Turn(alarm_id, "copilot", answer, request_id=request_id, origin=origin)
        self._turns.setdefault(alarm_id, []).append(turn)
        return turn

    # ---- the station loop ---------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Explain alarms until ``stop``: runbook diagnosis out at once, the model's later (one worker, one queue,
        questions first); answer questions; keep the recent readings each evidence pack is built from."""
        if self.alarms is None or self.diagnoses is None:
            raise RuntimeError("Copilot.run needs its alarms and diagnoses buffers")
        alarms, diagnoses = self.alarms, self.diagnoses

        async def take_readings(readings: Buffer[Reading]) -> None:
            while True:
                for item in [await readings.get()] + [readings.get_nowait() for _ in range(readings.qsize())]:
                    self.observe(item)  # (what piled up meanwhile, without a wake-up each)

        async def take_alarms() -> None:
            while True:
                item = await alarms.get()
                event = item.event if isinstance(item, AlarmEvent) else "raised"
                alarm = item.alarm if isinstance(item, AlarmEvent) else item
                if event not in EXPLAIN_EVENTS:
                    continue
                since = item.ts if isinstance(item, AlarmEvent) else self.clock()
                plan = self._plan(event, alarm)
                if plan is None:
                    self.counts["covered"] += 1
                    continue
                try:
                    diagnoses.offer(self.explain_now(alarm, since=since, pack=await self.gather(alarm)))
                except Exception:  # one alarm we cannot explain must not stop the others
                    log.exception("alarm %s: could not build a diagnosis", alarm.alarm_id)
                    continue
                if plan == "model" and self.backend is not None:
                    self._enqueue(_Job(DIAGNOSIS_JOB, alarm.alarm_id, since))

        async def model_worker() -> None:
            await self.warm_up()  # jobs queue meanwhile; the runbook diagnoses and answers go out regardless
            self._warm = True
            self._announce()
            while True:
                if not self._queue:
                    self._kick.clear()
                    await self._kick.wait()
                    continue
                job = self._queue.pop(0)
                self._running, job.started = job, time.perf_counter()
                self._announce()
                try:
                    if job.kind == DIAGNOSIS_JOB:
                        await self._diagnosis_job(job)
                    else:
                        await self._answer_job(job)
                except Exception:  # a broken job costs that job (its runbook answer stands), never the worker
                    log.exception("copilot: model job %s for %s failed", job.kind, job.alarm_id)
                took = time.perf_counter() - job.started
                old = self._took.get(job.kind)
                self._took[job.kind] = took if old is None else 0.7 * old + 0.3 * took
                self._running = None
                self._state(job, "done", 0)
                self._announce()

        async def announce() -> None:
            while True:
                await asyncio.sleep(ANNOUNCE_EVERY_S)
                if self._queue or self._running is not None:
                    self._announce()

        async def take_questions(questions: Buffer[Question]) -> None:
            while True:
                await self._answer(await questions.get())

        jobs = [take_alarms()]
        if self.backend is not None:
            jobs += [model_worker(), announce()]
        if self.readings is not None:
            jobs.append(take_readings(self.readings))
        if self.questions is not None:
            jobs.append(take_questions(self.questions))
        tasks = [asyncio.create_task(job) for job in jobs]
        await run_until(stop, tasks)

    # ---- the model's queue ---------------------------------------------------------------------------------

    def _plan(self, event: str, alarm: Alarm) -> str | None:
        """What an alarm event gets: a runbook diagnosis and a model job ("model"), the runbook's only ("runbook"),
        or nothing new (None: the diagnosis it has covers it)."""
        seen = self._diagnosed.get(alarm.alarm_id)
        if alarm.parent_id is not None:  # folded under its root: the root's diagnosis covers it
            return None if seen is not None else "runbook"
        if event == "realarm" and seen is not None and (
                self.clock() - seen[0] < self.rediagnose_after_s and seen[1] == _fault_of(alarm)):
            return None  # the same situation again, soon: its diagnosis stands (and its model job, if waiting)
        if alarm.anomaly is not None and alarm.anomaly.kind in DATA_SOURCE_KINDS:
            return "runbook"
        return "model"

    def _enqueue(self, job: _Job) -> None:
        if job.kind == DIAGNOSIS_JOB:
            if any(j.kind == DIAGNOSIS_JOB and j.alarm_id == job.alarm_id for j in self._queue):
                self.counts["covered"] += 1  # waiting already: it reads the newest evidence when its turn comes
                return
            waiting = sum(j.kind == DIAGNOSIS_JOB for j in self._queue)
            if waiting >= self.max_pending:
                self.counts["dropped_jobs"] += 1
                log.warning("alarm %s: model queue full (%d diagnoses waiting), runbook diagnosis only",
                            job.alarm_id, waiting)
                self._state(job, "dropped", len(self._queue), f"model queue full ({waiting} diagnoses waiting): the "
                                                              "runbook diagnosis stands")
                return
            self._queue.append(job)
        else:  # an operator waits: ahead of every diagnosis, behind earlier questions
            at = next((i for i, j in enumerate(self._queue) if j.kind == DIAGNOSIS_JOB), len(self._queue))
            self._queue.insert(at, job)
        self.counts["model_jobs"] += 1
        self._announce()
        self._kick.set()

    def _announce(self) -> None:
        """Every waiting job's place and estimate, and the running one's state (see ``ModelJob``)."""
        if self._running is not None:
            self._state(self._running, "running", 0)
        for i, job in enumerate(self._queue):
            self._state(job, "queued", i + (self._running is not None))

    def _state(self, job: _Job, state: str, position: int, detail: str | None = None) -> None:
        if self.jobs is None:
            return
        estimate = self._estimate(job) if state in ("queued", "running") else None
        self.jobs.offer(ModelJob(job.kind, job.alarm_id, state, position, len(self._queue),
                                 None if estimate is None else round(estimate, 1), job.since, self.clock(),
                                 request_id=job.question.request_id if job.question else None, detail=detail))

    def _estimate(self, job: _Job) -> float | None:
        """Seconds until ``job`` is expected complete: what the running job has left, then every job ahead, then it."""
        if not self._warm:
            return None
        now = time.perf_counter()
        total = 0.0
        ahead = self._queue[: self._queue.index(job)] if job in self._queue else []
        for j in ([self._running] if self._running is not None else []) + ahead + ([job] if job is not self._running else []):
            took = self._took.get(j.kind) or next(iter(self._took.values()), None)
            if took is None:
                return None
            total += max(0.0, took - (now - j.started)) if j.started is not None else took
        return total

    async def _diagnosis_job(self, job: _Job) -> None:
        assert self.diagnoses is not None and job.alarm_id is not None
        if job.alarm_id not in self._packs:
            self._state(job, "dropped", 0, "the alarm's evidence was forgotten (too many alarms since)")
            return
        chunks = self.chunks
        sink = (lambda piece, a=job.alarm_id: chunks.offer(DiagnosisChunk(a, piece))) if chunks is not None else None
        # the call's name and urgency for a backend that sends it elsewhere (pool.py): the alarm event, its priority
        called = CALL_FOR.set(CallFor(f"{job.alarm_id}@{job.since:.3f}", _urgency(self._packs[job.alarm_id].priority)))
        try:
            d = await self._model_diagnosis(job.alarm_id, sink)
        finally:
            CALL_FOR.reset(called)
        d.latency_s = max(0.0, self.clock() - job.since)  # what the operator waited: from the alarm, queue included
        if chunks is not None:
            chunks.offer(DiagnosisChunk(job.alarm_id, "", True))
        self.diagnoses.offer(d)
        self._diagnosed[job.alarm_id] = (self.clock(), self._diagnosed.get(job.alarm_id, (0.0, None))[1])

    async def _answer_job(self, job: _Job) -> None:
        q = job.question
        assert q is not None and job.pack is not None and job.fallback is not None
        answers = self.answers

        def sink(piece: str) -> None:
            if answers is not None:
                answers.offer(AnswerChunk(q.request_id, q.alarm_id, piece))

        called = CALL_FOR.set(CallFor(q.request_id or f"{q.alarm_id}?{job.since:.3f}", ANSWER_URGENCY))
        try:
            text = await self._model_answer(job.pack, q.question, job.history, sink)
        finally:
            CALL_FOR.reset(called)
        answer, origin = (text, "model") if text else (job.fallback, "runbook")
        self._finish_answer(q, self._close_question(q.alarm_id, answer, origin, q.request_id))

    async def _answer(self, q: Question) -> None:
        """One question from the dashboard: with a model, the runbook's answer at once and the model's queued ahead of
        diagnoses; its chunks stream, the last with the whole text (and which answer it is)."""
        answers = self.answers

        def sink(piece: str) -> None:
            if answers is not None:
                answers.offer(AnswerChunk(q.request_id, q.alarm_id, piece))

        try:
            if self.backend is None:
                self._finish_answer(q, await self.ask(q.alarm_id, q.question, q.actor, q.request_id, on_token=sink))
                return
            pack, history = self._open_question(q.alarm_id, q.question, q.actor, q.request_id)
        except KeyError as exc:
            if answers is not None:
                answers.offer(AnswerChunk(q.request_id, q.alarm_id, "", True, full_text=str(exc.args[0])))
            return
        fallback = runbook_answer(pack, q.question, self.library, self.faults)
        if answers is not None:  # what the runbooks say is ready now: the operator reads it while the model works
            answers.offer(AnswerChunk(q.request_id, q.alarm_id, "", False, full_text=fallback, origin="runbook"))
        self._enqueue(_Job(ANSWER_JOB, q.alarm_id, self.clock(), question=q, pack=pack, history=history,
                           fallback=fallback))

    def _finish_answer(self, q: Question, turn: Turn) -> None:
        if self.answers is not None:
            self.answers.offer(AnswerChunk(q.request_id, q.alarm_id, "", True, full_text=turn.text, origin=turn.origin))
        if self.turns is not None:
            for t in self.conversation(q.alarm_id)[-2:]:
                self.turns.offer(t)


def _urgency(priority: str) -> int:
    """A diagnosis' urgency for a pool of explainers: 1 (a low alarm) to 4 (critical); questions are 5."""
    try:
        return 5 - Priority.parse(priority).value
    except ValueError:
        return 1


def _fault_of(alarm: Alarm) -> str | None:
    return alarm.anomaly.fault_type if alarm.anomaly else None
