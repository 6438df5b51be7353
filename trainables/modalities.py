"""The modality registry: a literal dict from modality name to its adapter, and the one lookup
from a config's ``data.source`` to its adapter.

An adapter only builds data and model, runs its stage 0 if it has one, says which model stage 2
trains on cached features, and checks early that its data is present; the shared loop
(:mod:`trainables.loop`) does the rest for every modality. Each adapter lives beside its data
and model builders (:mod:`trainables.image`, :mod:`trainables.text`,
:mod:`trainables.point_cloud`) and declares the ``data.source`` values it serves.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from trainables.config import ExperimentConfig
from trainables.data.arrays import StageData
from trainables.image import IMAGE
from trainables.loop import Callback
from trainables.models import SplitNet
from trainables.point_cloud import POINT_CLOUD
from trainables.text import TEXT

__all__ = ["MODALITIES", "Modality", "modality_of"]


class Modality(Protocol):
    """What the trial needs of a modality (structural: the adapters do not inherit it)."""

    @property
    def sources(self) -> tuple[str, ...]:
        """The ``data.source`` values this modality serves."""
        ...

    def check_data(self, cfg: ExperimentConfig, *, fetch: bool = True) -> None:
        """Make sure now (before a cluster starts) that the data and pretrained weights are
        there, fetching what is missing when ``fetch`` and ``data.download`` allow it and the
        process is online; else raise :class:`~trainables.data.DatasetMissing` (or
        ``PretrainedWeightsMissing``) in one line. Loads no more than it must."""
        ...

    def data_and_model(
        self, cfg: ExperimentConfig, device: torch.device, *, load_pretrained: bool
    ) -> tuple[StageData, SplitNet]:
        """The data and a fresh model, both on ``device``. ``load_pretrained=False`` when a
        checkpoint is loaded next."""
        ...

    def start_stage1(
        self,
        cfg: ExperimentConfig,
        device: torch.device,
        *,
        generator: torch.Generator,
        callback: Callback | None = None,
    ) -> tuple[StageData, SplitNet]:
        """The data and the model stage 1 starts from: pretrained weights loaded and stage 0
        (if the modality has one) run, drawing from ``generator``."""
        ...

    def feature_model(
        self, cfg: ExperimentConfig, data: StageData, model_state: dict[str, Tensor], info: dict
    ) -> tuple[SplitNet, dict[str, Tensor]]:
        """The model stage 2 trains on the cached features ``data`` (f1 frozen), on the CPU,
        and the part of stage 1's ``model_state`` to load into it; ``info`` is stage 1's
        :attr:`~trainables.trial.Stage1Output.info`."""
        ...


MODALITIES: dict[str, Modality] = {
    "image": IMAGE,
    "text": TEXT,
    "point_cloud": POINT_CLOUD,
}


def modality_of(source: str) -> Modality:
    """The registered modality that serves ``data.source == source``; ValueError if none does
    (or, against the registry's contract, more than one)."""
    found = [name for name, m in MODALITIES.items() if source in m.sources]
    if len(found) != 1:
        served = "; ".join(f"{name}: {', '.join(m.sources)}" for name, m in MODALITIES.items())
        what = "no registered modality" if not found else f"{len(found)} modalities"
        raise ValueError(f"data.source {source!r}: {what} serves it (registered: {served})")
    return MODALITIES[found[0]]
