"""The work directory of a closed-form wash (``wash(..., workdir=)``; issue 14): one job — these facts
out of this model — whose expensive stages are checkpointed so that a rerun after a crash or a
``kill -9`` continues where it stopped and ends with the same deltas.

    workdir/
      job.json                   the job: the model's fingerprint (sha256 of its weights before the
                                 wash) and the facts washed; another job in the same folder is refused
      targets-<digest>/          z* per chunk (targets.TargetStore; shared by every config with the
                                 same target settings)
      stages-<digest>/           per config: init-L<layer>.pt (the MEMIT initialisation's Δ and report),
                                 law-L<layer>.pt (LaW's Δ, report and the facts still produced after it)

Every stage file is written atomically with its key and digest and checked before it is used
(``integrity.read_verified``); an unusable one is reported and recomputed, never trusted.  The
statistics have their own resumable, verified cache (``washing.stats``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from ..facts import Fact
from ..integrity import read_verified, write_atomic

log = logging.getLogger(__name__)

VERSION = 1  # the work directory's layout (job.json)
# what a stage's saved result means: 2 since the retained sources' C_p are summed (averaged before), so a
# stage saved for a config with several sources is not reused
STAGES_VERSION = 2


def _sha(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def facts_digest(facts: Sequence[Fact]) -> str:
    return _sha([[f.case_id, f.subject, f.template, f.answer] for f in facts])


class WorkdirMismatch(ValueError):
    """The work directory holds another job (``differs`` names what is not the same)."""

    def __init__(self, message: str, differs: list[str]):
        super().__init__(message)
        self.differs = differs


def claim(workdir, fingerprint: str, facts: Sequence[Fact]) -> Path:
    """The work directory for this job: made (with job.json) when new, checked when not; another
    model or other facts → :class:`WorkdirMismatch` naming which."""
    root = Path(workdir)
    job = {"version": VERSION, "model_fingerprint": fingerprint, "facts": facts_digest(facts), "n_facts": len(facts)}
    path = root / "job.json"
    if path.exists():
        try:
            found = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise WorkdirMismatch(
                f"{path} is unreadable ({e}); remove it or use another workdir", ["job.json"]
            ) from None
        differs = [k for k in ("version", "model_fingerprint", "facts") if found.get(k) != job[k]]
        if differs:
            what = {
                "model_fingerprint": f"the model (weights {str(found.get('model_fingerprint'))[:12]}… there, "
                f"{fingerprint[:12]}… here)",
                "facts": f"the facts ({found.get('n_facts')} facts there, {len(facts)} here, different content)",
                "version": f"the layout version ({found.get('version')} there, {VERSION} here)",
            }
            raise WorkdirMismatch(
                f"workdir {root} was made for another job: "
                + "; ".join(what[k] for k in differs)
                + ". Use another workdir for this one (or remove it).",
                differs,
            )
        return root
    root.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".job.json.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(job, indent=1))
    os.replace(tmp, path)
    return root


class StageStore:
    """Per-layer results of one config's stages in ``workdir/stages-<digest>/``."""

    def __init__(self, workdir: Path, fingerprint: str, facts: Sequence[Fact], config_dict: dict, inputs: dict):
        self.key = {
            "kind": "stages",
            "version": VERSION,
            "stages_version": STAGES_VERSION,
            "fingerprint": fingerprint,
            "facts": facts_digest(facts),
            "config": config_dict,
            "inputs": inputs,  # what the config names but does not hold: the corpus, a retain file (digests)
        }
        self.directory = Path(workdir) / f"stages-{_sha(self.key)[:20]}"

    def _path(self, stage: str, layer: int) -> Path:
        return self.directory / f"{stage}-L{layer}.pt"

    def load(self, stage: str, layer: int) -> dict | None:
        """{"delta": (d, f) float64, "report": dict, ...} saved for ``stage`` at ``layer``, or None."""
        path = self._path(stage, layer)
        if not path.exists():
            return None
        try:
            blob = read_verified(path, {**self.key, "stage": stage, "layer": layer})
            delta = blob["delta"]
            if not isinstance(delta, torch.Tensor) or delta.dim() != 2 or not bool(torch.isfinite(delta).all()):
                raise ValueError("delta is not a finite matrix")
            return {k: (json.loads(v) if k == "report" else v) for k, v in blob.items() if k != "key"}
        except Exception as e:  # corrupt, truncated or foreign: recompute the stage
            warnings.warn(f"stage checkpoint {path} is unusable ({type(e).__name__}: {e}); recomputing", stacklevel=2)
            return None

    def save(self, stage: str, layer: int, delta: torch.Tensor, report: dict, **extra) -> None:
        blob = {
            "key": json.dumps({**self.key, "stage": stage, "layer": layer}, sort_keys=True),
            "delta": delta.detach().to("cpu", torch.float64).contiguous(),
            "report": json.dumps(report, default=str),
            **extra,
        }
        write_atomic(self._path(stage, layer), blob)
