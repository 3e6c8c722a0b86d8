"""
``Predictor``: one image in, one result out, in the spirit of detectron2's ``DefaultPredictor``,
for any sfnet-d2 config (semantic or panoptic):

    from sfnet_d2.engine import Predictor, build_config

    cfg = build_config("configs/demo/sfnet_lite_R18_demo.yaml",
                       ["MODEL.WEIGHTS", "output/demo/sfnet_lite_R18/model_final.pth"])
    predictor = Predictor(cfg)
    outputs = predictor(cv2.imread("street.png"))   # BGR uint8, as cv2 reads it
    labels = outputs["sem_seg"].argmax(0)            # or outputs["panoptic_seg"]

* the weights come through the project's one safe loader (``load_model_weights``): no code runs
  from the file, another architecture's file is refused, an empty MODEL.WEIGHTS is an error
  ("random" asks for an untrained model on purpose);
* the optimised inference path (``DEPLOY.*``) is used by default;
* the config's test-time resize (``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``, detectron2's
  ``ResizeShortestEdge``; 0 = the image as it is, the paper's full-resolution protocol) is applied,
  and the outputs come at the input image's size.
"""
import logging

import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.modeling import build_model

from sfnet_d2.deployment import build_inference_model
from sfnet_d2.engine.checkpoint import load_model_weights

__all__ = ["Predictor", "build_model_with_weights"]

logger = logging.getLogger("sfnet_d2")


def build_model_with_weights(cfg, *, purpose: str, required: bool = True):
    """The eval-mode model of ``cfg`` on ``cfg.MODEL.DEVICE`` with ``MODEL.WEIGHTS`` loaded the
    one safe way (see ``load_model_weights``)."""
    model = build_model(cfg).eval()
    load_model_weights(model, cfg.MODEL.WEIGHTS, purpose=purpose, required=required)
    return model


class Predictor:
    """See the module docstring.

    Attributes:
        model: the eval-mode model with its weights (the plain one, e.g. for flow pictures).
        inference_model: what ``__call__`` runs: the optimised copy, or ``model``.
        metadata: the metadata of the config's first test (or training) dataset.
    """

    def __init__(self, cfg, *, optimize: bool = True, purpose: str = "the predictor"):
        self.cfg = cfg.clone()
        self.model = build_model_with_weights(cfg, purpose=purpose)
        use_optimized = optimize and cfg.DEPLOY.OPTIMIZE
        if use_optimized:
            logger.info("Using the optimised inference path (DEPLOY.*; set "
                        "DEPLOY.OPTIMIZE False for the plain model)")
        self.inference_model = build_inference_model(cfg, self.model) if use_optimized else self.model
        datasets = list(cfg.DATASETS.TEST) or list(cfg.DATASETS.TRAIN)
        self.metadata = MetadataCatalog.get(datasets[0]) if datasets else None
        self.input_format = cfg.INPUT.FORMAT
        if self.input_format not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT={self.input_format!r}: the predictor takes 'RGB' or "
                             "'BGR'")
        min_size = cfg.INPUT.MIN_SIZE_TEST
        self.resize = (T.ResizeShortestEdge([min_size, min_size], cfg.INPUT.MAX_SIZE_TEST)
                       if min_size > 0 else None)

    def __call__(self, image: np.ndarray, input_format: str = "BGR") -> dict:
        """
        Args:
            image: (H, W, 3) uint8 array in ``input_format`` ("BGR", as cv2 reads images, by
                default, or "RGB").
        Returns:
            the model's output dict for the image, at its size: ``sem_seg`` (C, H, W) scores for
            semantic models, ``panoptic_seg`` (id map, segments info) for panoptic ones.
        """
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"Predictor: expected an (H, W, 3) uint8 image, got shape "
                             f"{tuple(image.shape)} dtype {image.dtype}")
        if input_format not in ("RGB", "BGR"):
            raise ValueError(f"input_format={input_format!r}: expected 'RGB' or 'BGR'")
        if input_format != self.input_format:
            image = image[:, :, ::-1]
        height, width = image.shape[:2]
        if self.resize is not None:
            image = self.resize.get_transform(image).apply_image(image)
        tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        with torch.no_grad():
            return self.inference_model([{"image": tensor, "height": height, "width": width}])[0]
