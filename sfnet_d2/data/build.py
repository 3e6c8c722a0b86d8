"""
The data loaders of both tasks, chosen by the config and never by the meta-architecture:

* ``INPUT.DATASET_MAPPER_NAME`` names the mapper class in ``DATASET_MAPPER_REGISTRY``
  ("SFNetSemanticDatasetMapper" for the semantic models, "KNetPanopticDatasetMapper" for K-Net),
  as Mask2Former chooses its mappers by ``INPUT.DATASET_MAPPER_NAME``;
* ``build_train_loader`` gives the training stream (``train_stream.py``) and
  ``build_test_loader`` detectron2's test loader, with that mapper.
"""
from detectron2.data import build_detection_test_loader
from detectron2.utils.registry import Registry

__all__ = ["DATASET_MAPPER_REGISTRY", "build_dataset_mapper", "build_train_loader",
           "build_test_loader"]

DATASET_MAPPER_REGISTRY = Registry("DATASET_MAPPER")
DATASET_MAPPER_REGISTRY.__doc__ = """
Dataset mappers by name (``INPUT.DATASET_MAPPER_NAME``). A mapper class is called as
``cls(cfg, is_train)`` and maps one dataset record to one model input dict.
"""


def build_dataset_mapper(cfg, is_train: bool):
    """The mapper ``INPUT.DATASET_MAPPER_NAME`` names, built for training or testing."""
    name = cfg.INPUT.DATASET_MAPPER_NAME
    if name not in DATASET_MAPPER_REGISTRY:
        known = sorted(k for k, _ in DATASET_MAPPER_REGISTRY)
        raise KeyError(f"INPUT.DATASET_MAPPER_NAME={name!r} is not a registered dataset mapper; "
                       f"expected one of {known}")
    return DATASET_MAPPER_REGISTRY.get(name)(cfg, is_train)


def build_train_loader(cfg):
    """The training loader of ``DATASETS.TRAIN`` for either task: the resumable, seeded,
    bad-sample-skipping stream (class-uniform sampling where DATALOADER.SFNET asks for it)."""
    from sfnet_d2.data.uniform_sampling import build_sfnet_train_loader

    return build_sfnet_train_loader(cfg, mapper=build_dataset_mapper(cfg, True))


def build_test_loader(cfg, dataset_name: str):
    """detectron2's test loader of ``dataset_name`` with the config's mapper."""
    return build_detection_test_loader(cfg, dataset_name, mapper=build_dataset_mapper(cfg, False))
