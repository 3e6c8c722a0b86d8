"""
Converters of released weights into this project's layout: the official SFSegNets checkpoints
(``official_converter``, all key maps of backbones and heads), the official/HuggingFace MiT and
SegFormer files (``mit_converter``), and the class-name transfer of K-Net weights between datasets
(``knet_class_transfer``). Commands: projects/SFNet/convert_official.py, convert_mit.py,
train_panoptic_pipeline.py.
"""
from sfnet_d2.converters.official_converter import (
    OFFICIAL_ARCHS,
    ConversionError,
    ConversionResult,
    OfficialArch,
    convert_official_state_dict,
    invert_mapping,
    read_official_checkpoint,
    resolve_arch,
)
from sfnet_d2.converters.official_heads import official_head_key_map
from sfnet_d2.converters.knet_class_transfer import match_classes_by_name, transfer_checkpoint
