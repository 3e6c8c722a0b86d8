"""Pictures: prediction overlays (``overlays``) and semantic-flow fields (``flow``)."""
from sfnet_d2.visualization.overlays import (concat_side_by_side, draw_prediction,
                                             draw_semantic_side_by_side)
