"""What a ModelVersion asks the registry for, and what a resolution pins: pure values, no I/O.

The operator's domain (builders, reconcile's planning) works with these; the MLflow adapter (``registry``)
produces them. Kept apart so the pure modules never import the HTTP client.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

# The model signature kept in status is bounded: an object's status shares etcd's 1.5 MiB object limit and
# every watcher receives it on each write, and a wide model can log thousands of columns.
SIGNATURE_MAX_BYTES = 4096
SIGNATURE_MAX_INPUTS = 20


def summarise_signature(inputs: str) -> tuple[str, int | None, bool]:
    """(signature to keep in status, number of inputs or None when not a JSON list, truncated?).

    A signature within ``SIGNATURE_MAX_BYTES`` is kept as logged. A larger one keeps its first inputs (at
    most ``SIGNATURE_MAX_INPUTS``, and within the byte bound) as a JSON list; the count says how many there are.
    """
    try:
        columns = json.loads(inputs) if inputs else None
    except ValueError:
        columns = None
    count = len(columns) if isinstance(columns, list) else None
    if len(inputs.encode()) <= SIGNATURE_MAX_BYTES:
        return inputs, count, False
    if columns is None or not isinstance(columns, list):
        return inputs.encode()[:SIGNATURE_MAX_BYTES].decode(errors="ignore"), None, True
    kept: list[Any] = []
    for column in columns[:SIGNATURE_MAX_INPUTS]:
        if len(json.dumps(kept + [column]).encode()) > SIGNATURE_MAX_BYTES:
            break
        kept.append(column)
    return json.dumps(kept), count, True


@dataclass(frozen=True)
class ModelRef:
    """What a ModelVersion asks for."""

    name: str
    version: str = ""
    alias: str = ""

    def __str__(self) -> str:
        return f"{self.name}@{self.alias}" if self.alias else f"{self.name}/{self.version}"


@dataclass(frozen=True)
class ResolvedModel:
    """An immutable registered model version, with its provenance."""

    name: str
    version: str
    alias: str
    run_id: str
    artifact_uri: str
    source: str
    flavor: str
    signature: str
    resolved_at: str
    signature_inputs: int | None = None
    """How many inputs the signature has (None: unknown); ``signature`` may list only the first ones."""
    signature_truncated: bool = False

    @property
    def model_uri(self) -> str:
        """What a serving pod loads: the pinned version, never the moving alias."""
        return f"models:/{self.name}/{self.version}"

    def as_status(self, signature: bool = True) -> dict[str, Any]:
        """``status.model``; without ``signature`` (a canary's copy in ``status.rollout``) the signature fields
        are left out, so a rollout never holds a second signature."""
        out: dict[str, Any] = {
            "name": self.name, "version": self.version, "alias": self.alias, "runId": self.run_id,
            "artifactUri": self.artifact_uri, "source": self.source, "flavor": self.flavor,
            "resolvedAt": self.resolved_at,
        }
        if signature:
            out["signature"] = self.signature
            if self.signature_inputs is not None:
                out["signatureInputs"] = self.signature_inputs
            if self.signature_truncated:
                out["signatureTruncated"] = True
        return out
