"""Data: dataset registration (``datasets``), mappers (``dataset_mappers``), the training
stream and samplers, augmentations, and the built-in demo data."""
from sfnet_d2.data import datasets  # noqa: F401  (registers datasets)
from sfnet_d2.data.demo_data import demo_data_is_complete, generate_demo_cityscapes
from sfnet_d2.data.dataset_mappers.semantic_mapper import SFNetSemanticDatasetMapper, read_and_check_label
from sfnet_d2.data.transforms import PadToSize, RandomScale, build_sfnet_train_augmentations
from sfnet_d2.data.uniform_sampling import (ClassUniformDataset, ClassUniformTrainingSampler,
                               build_sfnet_train_loader, load_or_build_centroids)
from sfnet_d2.data.demo_panoptic import ensure_demo_panoptic, generate_demo_coco_panoptic
from sfnet_d2.data.datasets.panoptic import register_coco_panoptic_by_paths
from sfnet_d2.data.dataset_mappers.panoptic_mapper import KNetPanopticDatasetMapper
from sfnet_d2.data.build import (DATASET_MAPPER_REGISTRY, build_dataset_mapper, build_test_loader,
                                 build_train_loader)
