"""Evaluators: chosen by the dataset's evaluator_type (``build``), and the Cityscapes test-server
submission writer."""
from sfnet_d2.evaluation.build import (PANOPTIC_EVALUATOR_TYPES, PanopticSemSegEvaluator,
                                       build_evaluator)
from sfnet_d2.evaluation.cityscapes_submission import (CityscapesSubmissionWriter,
                                                       train_id_to_label_id_table)

__all__ = ["build_evaluator", "PanopticSemSegEvaluator", "PANOPTIC_EVALUATOR_TYPES",
           "CityscapesSubmissionWriter", "train_id_to_label_id_table"]
