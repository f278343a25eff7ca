"""The copilot station: grounded explanations of alarms from runbooks and a local quantized Qwen.

Public API: ``Copilot`` (the station), ``SignalHistory``, ``EvidencePack``/``build_evidence``,
``IncidentMemory``/``InMemoryIncidents``, ``load_runbooks``, the ``LLMBackend`` protocol and its ``Reply``, the backends
``LocalModel`` (llama.cpp in a child process)/``LlamaCppBackend``/``OpenAIBackend`` and ``backend_from_settings``.
"""

from factory_copilot.copilot.backends import LlamaCppBackend, OpenAIBackend
from factory_copilot.copilot.choice import backend_from_settings
from factory_copilot.copilot.diagnosis import DIAGNOSIS_SCHEMA, diagnosis_schema, model_diagnosis, runbook_diagnosis
from factory_copilot.copilot.evidence import EvidencePack, IncidentMemory, InMemoryIncidents, SignalHistory, build_evidence
from factory_copilot.copilot.language_model import BackendError, LLMBackend, ModelTimeout, ModelUnavailable, Reply
from factory_copilot.copilot.runbooks import RunbookLibrary, load_runbooks, runbooks_of
from factory_copilot.copilot.station import Copilot
from factory_copilot.copilot.worker import LocalModel

__all__ = [
    "BackendError", "Copilot", "DIAGNOSIS_SCHEMA", "EvidencePack", "IncidentMemory", "InMemoryIncidents",
    "LLMBackend", "LlamaCppBackend", "LocalModel", "ModelTimeout", "ModelUnavailable", "OpenAIBackend", "Reply",
    "RunbookLibrary", "SignalHistory", "backend_from_settings", "build_evidence", "diagnosis_schema",
    "load_runbooks", "model_diagnosis", "runbook_diagnosis", "runbooks_of",
]
