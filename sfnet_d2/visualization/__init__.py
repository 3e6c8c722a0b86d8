"""Pictures: prediction overlays (``overlays``), semantic-flow fields (``flow``), a predictor on the
user's images, folders and videos (``demo``) and the training stream drawn (``training_data``)."""
from sfnet_d2.visualization.overlays import (concat_side_by_side, draw_prediction,
                                             draw_semantic_side_by_side)
