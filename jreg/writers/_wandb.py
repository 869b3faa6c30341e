"""Weights & Biases runs through ``wandb.init(..., reinit="create_new")``: several live runs in one process.

A member's run has the id ``<group[:16]>-<hash of its name>`` (``group`` is jreg's run id), its display name
the member's name and its W&B group jreg's run id, so the K runs of one sweep are grouped in the W&B UI and a
resumed run (``resume="allow"``) appends to the same runs. W&B ignores a step lower than one it already holds:
a resumed run's repeated epochs (after the last checkpoint) keep the first values. Offline:
``WANDB_MODE=offline`` (then ``wandb sync``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from .._errors import JregTypeError
from ._runs import OwnRun, require


class WandB(OwnRun):
    """W&B runs in ``project``: one per member of a sweep, grouped by jreg's run id.

    ``init``: further keywords for every ``wandb.init`` call (``entity=``, ``tags=``, ``mode="offline"``,
    ``dir=``...). A fit's run is named ``name`` (W&B picks one when None). Used directly as a writer, it
    logs into one run it starts on first use.
    """

    def __init__(self, project: str | None = None, *, name: str | None = None, **init: Any):
        if project is not None and not isinstance(project, str):
            raise JregTypeError(f"WandB: project must be a name (str), got {project!r}")
        for reserved in ("id", "group", "resume", "reinit", "config"):
            if reserved in init:
                raise JregTypeError(f"WandB: {reserved}= is set by jreg for each run; leave it out")
        require("wandb", "wandb", "jreg.writers.WandB")
        self.project, self.name, self.init = project, name, init
        self._own: _Run | None = None

    def __repr__(self) -> str:
        return f"WandB({self.project!r})"

    def run(self, name: str | None, *, group: str | None = None, start: int = 0) -> _Run:
        """The run ``name`` (None: ``self.name``), resumed when its id already exists."""
        import wandb

        run_id = None
        if group is not None:
            run_id = f"{group[:16]}-{hashlib.sha1((name or '').encode()).hexdigest()[:12]}"
        run = wandb.init(
            project=self.project,
            name=name if name is not None else self.name,
            group=group,
            id=run_id,
            resume="allow" if run_id is not None else None,
            reinit="create_new",
            **self.init,
        )
        return _Run(run)

    def flush(self) -> None:
        pass


class _Run:
    """One W&B run (a :class:`jreg.writers.Writer`)."""

    def __init__(self, run: Any):
        self.wandb_run = run

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        self.wandb_run.log({str(k): float(v) for k, v in scalars.items()}, step=int(step))

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        values = {str(k): (v.item() if hasattr(v, "item") else v) for k, v in hparams.items()}
        self.wandb_run.config.update(values, allow_val_change=True)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.wandb_run.finish()
