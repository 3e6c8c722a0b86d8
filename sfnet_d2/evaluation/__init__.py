"""Evaluators beyond detectron2's: Cityscapes test-server submission files."""
from .cityscapes_submission import CityscapesSubmissionWriter, train_id_to_label_id_table

__all__ = ["CityscapesSubmissionWriter", "train_id_to_label_id_table"]
