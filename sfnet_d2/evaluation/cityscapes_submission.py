"""
Cityscapes test-server submission files, written by a detectron2 evaluator.

The evaluation server (Table 3 of the paper) takes one PNG per test image holding Cityscapes
*label ids* (0..33, not the 19 train ids), named after the image (``{city}_{seq}_{frame}*.png``).
``CityscapesSubmissionWriter`` turns each predicted train-id map into that file, so that

    python projects/SFNet/train_net.py --eval-only --config-file X.yaml MODEL.WEIGHTS w.pth \
        DATASETS.TEST "('cityscapes_fine_sem_seg_test',)" TEST.SFNET.EVALUATOR submission

runs any evaluation protocol (``TEST.SFNET.*``) over the test split and leaves the files in
``OUTPUT_DIR/submission/cityscapes_fine_sem_seg_test/`` (zip that folder for the server). Works
with any number of processes (each writes its own images). Existing files are only replaced when
``overwrite`` is set: a second run into the same folder refuses instead of mixing two models.
"""
import logging
import os

import numpy as np
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from PIL import Image

__all__ = ["CityscapesSubmissionWriter", "train_id_to_label_id_table"]

logger = logging.getLogger(__name__)


def train_id_to_label_id_table() -> np.ndarray:
    """uint8 lookup table: train id (0..255) -> Cityscapes label id; 255 for non-train ids."""
    from cityscapesscripts.helpers.labels import labels

    table = np.full(256, 255, dtype=np.uint8)
    for label in labels:
        if 0 <= label.trainId < 255 and not label.ignoreInEval:
            table[label.trainId] = label.id
    return table


def _submission_name(image_file: str) -> str:
    base = os.path.splitext(os.path.basename(image_file))[0]
    if base.endswith("_leftImg8bit"):
        base = base[: -len("_leftImg8bit")]
    return base + "_labelIds.png"


class CityscapesSubmissionWriter(DatasetEvaluator):
    def __init__(self, dataset_name: str, output_dir: str, overwrite: bool = False):
        self._dataset_name = dataset_name
        self._output_dir = output_dir
        self._overwrite = overwrite
        self._table = train_id_to_label_id_table()
        self._written = 0

    def reset(self):
        if comm.is_main_process():
            existing = os.path.isdir(self._output_dir) and any(
                f.endswith(".png") for f in os.listdir(self._output_dir))
            if existing and not self._overwrite:
                raise FileExistsError(
                    f"{self._output_dir} already holds submission PNGs; remove the folder or use "
                    "another OUTPUT_DIR, so that two models' predictions never mix"
                )
        comm.synchronize()
        os.makedirs(self._output_dir, exist_ok=True)
        self._written = 0

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            train_ids = out["sem_seg"].argmax(dim=0).to("cpu").numpy().astype(np.uint8)
            path = os.path.join(self._output_dir, _submission_name(inp["file_name"]))
            Image.fromarray(self._table[train_ids]).save(path)
            self._written += 1

    def evaluate(self):
        counts = comm.gather(self._written, dst=0)
        if not comm.is_main_process():
            return {}
        total = sum(counts)
        logger.info(f"Wrote {total} Cityscapes submission PNGs (label ids) of {self._dataset_name} "
                    f"to {self._output_dir}; zip that folder for the evaluation server")
        # detectron2 prints nothing for an empty result; report the count as a pseudo-metric
        return {"submission": {"images_written": float(total)}}
