from .official_converter import (
    OFFICIAL_ARCHS,
    ConversionError,
    ConversionResult,
    OfficialArch,
    convert_official_state_dict,
    invert_mapping,
    read_official_checkpoint,
    resolve_arch,
)
from .official_heads import official_head_key_map
