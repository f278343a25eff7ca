"""``factory-copilot models pull|list``: the official Qwen2.5-Instruct GGUFs, fetched, verified and recorded.

    factory-copilot models list                    # what is here, and the default for this machine
    factory-copilot models pull [0.5b|1.5b|3b|7b]  # the default for this machine when no size is given
    factory-copilot models pull --repo OWNER/NAME --file F.gguf [--revision SHA]

A pull resolves the revision to one commit first (``--revision``, else the one recorded by an
earlier pull, else the repository's current one) and fetches every byte at that commit through
``huggingface_hub`` (progress bar; an interrupted transfer resumes where it stopped). The file's
SHA-256 is computed and compared with the hub's own LFS metadata for that commit: a mismatch
refuses the file and removes it. A manifest (``manifest.json`` beside the files: repo, revision,
file, sha256, size) records what was verified; ``run``, ``demo`` and ``/health`` report it.
Offline or refused: one clear line, and the copilot runs runbook-only; never a traceback.
``HF_ENDPOINT`` points at another hub (a mirror, or a test server speaking the same endpoints).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import sys
import time

from factory_copilot.errors import FactoryCopilotError
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://huggingface.co"


@dataclass(frozen=True)
class Choice:
    """One published model: where it lives and what it needs."""

    size: str
    repo: str
    file: str
    approx_gb: float
    min_ram_gb: float
    revision: str | None = None  # a commit to pin to; None: the commit resolved (and recorded) at the first pull


CHOICES = {
    "0.5b": Choice("0.5b", "Qwen/Qwen2.5-0.5B-Instruct-GGUF", "qwen2.5-0.5b-instruct-q4_k_m.gguf", 0.5, 2),
    "1.5b": Choice("1.5b", "Qwen/Qwen2.5-1.5B-Instruct-GGUF", "qwen2.5-1.5b-instruct-q4_k_m.gguf", 1.1, 4),
    "3b": Choice("3b", "Qwen/Qwen2.5-3B-Instruct-GGUF", "qwen2.5-3b-instruct-q4_k_m.gguf", 2.1, 6),
    "7b": Choice("7b", "Qwen/Qwen2.5-7B-Instruct-GGUF", "qwen2.5-7b-instruct-q4_k_m-00001-of-00002.gguf", 4.7, 12),
}


class PullError(FactoryCopilotError, RuntimeError):
    """A pull that did not give a verified file; the message is the one line the user reads."""


def models_dir() -> Path:
    """Where model files and their manifest live: FACTORY_COPILOT_MODELS, else a per-user cache folder."""
    return Path(os.environ.get("FACTORY_COPILOT_MODELS") or Path.home() / ".cache" / "factory-copilot" / "models")


def endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


# ---- the machine ---------------------------------------------------------------------------------------------


@dataclass
class Machine:
    cores: int
    ram_gb: float
    gpu: str | None  # what was found, e.g. "NVIDIA (nvidia-smi)"

    @classmethod
    def here(cls) -> "Machine":
        import psutil

        gpu = None
        if shutil.which("nvidia-smi") or Path("/dev/nvidia0").exists():
            gpu = "NVIDIA"
        elif Path("/dev/kfd").exists():
            gpu = "AMD (ROCm)"
        return cls(os.cpu_count() or 1, psutil.virtual_memory().total / 2**30, gpu)


def default_size(machine: Machine) -> str:
    """The model a machine can run to give a diagnosis in seconds (see models/README.md for the measurements).

    On 2-3 CPU cores the 1.5B model takes most of ten seconds per diagnosis; the 0.5B about half
    that. A GPU, or 4+ cores with the RAM for it, runs the 1.5B (the default); a GPU with room runs more.
    """
    if machine.gpu and machine.ram_gb >= 16:
        return "3b"
    if machine.cores >= 4 and machine.ram_gb >= CHOICES["1.5b"].min_ram_gb:
        return "1.5b"
    return "0.5b"


# ---- the manifest ---------------------------------------------------------------------------------------------


@dataclass
class Pulled:
    repo: str
    revision: str
    file: str
    sha256: str
    size: int
    pulled_at: float

    def to_dict(self) -> dict:
        return asdict(self)


def read_manifest(directory: Path | None = None) -> dict[str, Pulled]:
    """File name -> what was pulled and verified; a damaged manifest reads as empty (and is said once)."""
    path = (directory or models_dir()) / "manifest.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        return {name: Pulled(**entry) for name, entry in data.get("models", {}).items()}
    except (ValueError, TypeError) as exc:
        log.warning("model manifest %s unreadable (%s); pull again to rewrite it", path, exc)
        return {}


def write_manifest(entries: dict[str, Pulled], directory: Path) -> None:
    path = directory / "manifest.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"models": {k: v.to_dict() for k, v in sorted(entries.items())}}, indent=2) + "\n")
    tmp.replace(path)


def manifest_for(model_path: str | Path | None) -> dict | None:
    """The manifest entry of a model file (what ``/health`` and the demo report), or None if it was not pulled here."""
    if not model_path:
        return None
    path = Path(model_path)
    entry = read_manifest(path.parent).get(path.name)
    return entry.to_dict() if entry else None


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# ---- pulling --------------------------------------------------------------------------------------------------


def _why(exc: BaseException) -> str:
    """One line for a failed hub request: offline, refused, not found."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    name = type(exc).__name__
    if "Offline" in name:
        return "offline mode is on (HF_HUB_OFFLINE)"
    if any(k in name for k in ("Connect", "Timeout", "Network")) or "connection" in text.lower():
        return f"cannot reach {endpoint()} ({text})"
    if "RepositoryNotFound" in name or "EntryNotFound" in name or "RevisionNotFound" in name:
        return f"not found on {endpoint()}: {text}"
    return f"{name}: {text}"


def pull(repo: str, file: str, revision: str | None = None, directory: Path | None = None,
         progress: bool = True) -> tuple[Path, Pulled]:
    """Fetch ``file`` of ``repo`` at one commit into ``directory``, verify its SHA-256, record it; raise PullError."""
    try:
        from huggingface_hub import HfApi, hf_hub_download
    except ImportError:
        raise PullError("huggingface_hub is not installed (pip install huggingface_hub)") from None

    directory = directory or models_dir()
    directory.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(directory)
    known = manifest.get(Path(file).name)
    revision = revision or (known.revision if known and known.repo == repo else None)
    api = HfApi(endpoint=endpoint())
    try:
        info = api.model_info(repo, revision=revision or "main", files_metadata=True)
    except Exception as exc:  # the hub library raises many kinds; the user needs one line, not a traceback
        raise PullError(f"cannot pull {repo}/{file}: {_why(exc)}") from None
    commit = info.sha or revision
    sibling = next((s for s in info.siblings or [] if s.rfilename == file), None)
    if sibling is None:
        names = ", ".join(s.rfilename for s in info.siblings or [] if s.rfilename.endswith(".gguf"))[:300]
        raise PullError(f"{repo} has no file {file} at {commit}; it has: {names or 'no GGUF files'}")
    if sibling.lfs is None or not getattr(sibling.lfs, "sha256", None):
        raise PullError(f"{repo}/{file}: the hub gives no LFS SHA-256 for it, so it cannot be verified; refused")
    expected = sibling.lfs.sha256.lower()
    target = directory / file
    if target.is_file() and known and known.sha256 == expected and target.stat().st_size == known.size:
        log.info("%s is here already (verified %s)", target, expected[:12])
        return target, known
    if not progress:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    try:
        path = Path(hf_hub_download(repo, file, revision=commit, local_dir=directory, endpoint=endpoint()))
    except Exception as exc:
        raise PullError(f"cannot pull {repo}/{file}: {_why(exc)}") from None
    actual = sha256_of(path)
    if actual != expected:
        path.unlink(missing_ok=True)
        raise PullError(f"{repo}/{file}: SHA-256 {actual} does not match the hub's {expected}; file refused and removed")
    entry = Pulled(repo, str(commit), file, actual, path.stat().st_size, time.time())
    manifest[Path(file).name] = entry
    write_manifest(manifest, directory)
    log.info("%s verified (sha256 %s) at %s", path, actual, commit)
    return path, entry


def pull_default(size: str | None = None, directory: Path | None = None, progress: bool = True) -> Path:
    """The model of ``size`` (default: the one for this machine), pulled and verified; PullError says why not."""
    choice = CHOICES[size or default_size(Machine.here())]
    path, _ = pull(choice.repo, choice.file, choice.revision, directory, progress)
    return path


def local_default(directory: Path | None = None) -> Path | None:
    """A verified model already here for this machine (no network), or None."""
    directory = directory or models_dir()
    manifest = read_manifest(directory)
    preferred = default_size(Machine.here())
    for size in [preferred] + [s for s in CHOICES if s != preferred]:
        entry = manifest.get(CHOICES[size].file)
        path = directory / CHOICES[size].file
        if entry and path.is_file() and path.stat().st_size == entry.size:
            return path
    return None


# ---- the command ----------------------------------------------------------------------------------------------


def run_pull(args: argparse.Namespace) -> int:
    if args.repo or args.file:
        if not (args.repo and args.file):
            print("error: --repo and --file go together", file=sys.stderr)
            return 2
        repo, file, revision = args.repo, args.file, args.revision
    else:
        choice = CHOICES[args.size or default_size(Machine.here())]
        repo, file, revision = choice.repo, choice.file, args.revision or choice.revision
    directory = Path(args.dir) if args.dir else models_dir()
    try:
        path, entry = pull(repo, file, revision, directory, progress=not args.quiet)
    except PullError as exc:
        print(f"models pull: {exc}. The copilot explains alarms from the runbooks until a model is there.",
              file=sys.stderr)
        return 1
    print(f"{path}: {entry.size / 2**20:.1f} MiB, sha256 {entry.sha256} (verified against the hub), "
          f"{entry.repo}@{entry.revision}")
    return 0


def run_list(args: argparse.Namespace) -> int:
    directory = Path(args.dir) if args.dir else models_dir()
    machine = Machine.here()
    default = default_size(machine)
    print(f"this machine: {machine.cores} cores, {machine.ram_gb:.0f} GiB RAM, GPU: {machine.gpu or 'none'}; "
          f"default model: {default} ({CHOICES[default].repo})")
    manifest = read_manifest(directory)
    print(f"models in {directory}:")
    if not manifest:
        print("  none pulled yet: factory-copilot models pull")
    for name, entry in manifest.items():
        path = directory / name
        state = "ok" if path.is_file() and path.stat().st_size == entry.size else "MISSING or changed: pull again"
        mark = " (default)" if name == CHOICES[default].file else ""
        print(f"  {name}{mark}: {entry.size / 2**20:.1f} MiB, sha256 {entry.sha256[:16]}…, {entry.repo}@{entry.revision[:12]}"
              f" [{state}]")
    others = [c for c in CHOICES.values() if c.file not in manifest]
    if others:
        print("available: " + ", ".join(f"{c.size} (~{c.approx_gb:g} GB, needs {c.min_ram_gb:g} GiB RAM)" for c in others))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="pull and list the copilot's Qwen GGUF models (verified, with a manifest)",
                       description=__doc__.splitlines()[0])
    inner = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    pl = inner.add_parser("pull", help="download a model at one commit, verify its SHA-256, record it")
    pl.add_argument("size", nargs="?", choices=sorted(CHOICES), help="default: the model for this machine")
    pl.add_argument("--repo", help="any GGUF repository (with --file)")
    pl.add_argument("--file", help="the GGUF file in --repo")
    pl.add_argument("--revision", help="a commit (or tag) to pull; default: the one recorded, else the current one")
    pl.add_argument("--dir", help="where models live (default $FACTORY_COPILOT_MODELS or ~/.cache/factory-copilot/models)")
    pl.add_argument("--quiet", action="store_true", help="no progress bar")
    pl.set_defaults(func=run_pull)
    ls = inner.add_parser("list", help="the models here and the default for this machine")
    ls.add_argument("--dir", help="where models live")
    ls.set_defaults(func=run_list)
