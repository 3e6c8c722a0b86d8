"""Dataset mappers: semantic training/test (``semantic_mapper``) and K-Net panoptic
(``panoptic_mapper``)."""
from sfnet_d2.data.dataset_mappers.semantic_mapper import (SFNetSemanticDatasetMapper,
                                                           read_and_check_label)
from sfnet_d2.data.dataset_mappers.panoptic_mapper import KNetPanopticDatasetMapper
