"""Evaluators beyond detectron2's: Cityscapes test-server submission files."""
from sfnet_d2.evaluation.cityscapes_submission import CityscapesSubmissionWriter, train_id_to_label_id_table

__all__ = ["CityscapesSubmissionWriter", "train_id_to_label_id_table"]
