from . import datasets  # noqa: F401  (registers datasets)
from .demo_data import demo_data_is_complete, generate_demo_cityscapes
from .semantic_mapper import SFNetSemanticDatasetMapper, read_and_check_label
from .transforms import PadToSize, RandomScale, build_sfnet_train_augmentations
from .uniform_sampling import (ClassUniformDataset, ClassUniformTrainingSampler,
                               build_sfnet_train_loader, load_or_build_centroids)
from . import panoptic_datasets  # noqa: F401  (registers the demo panoptic datasets)
from .demo_panoptic import ensure_demo_panoptic, generate_demo_coco_panoptic
from .panoptic_datasets import register_coco_panoptic_by_paths
from .panoptic_mapper import KNetPanopticDatasetMapper
