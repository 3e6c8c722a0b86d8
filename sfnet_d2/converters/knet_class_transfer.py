"""
Initialise a K-Net of one class set from a checkpoint trained on another (COCO -> Cityscapes).

Every tensor that does not depend on the class set (backbone, neck, kernel-feature branches, thing
kernels, update stages except their classifiers, buffers) is transferred unchanged; shapes must
agree. The class-dependent tensors are the rows of

* ``kernel_head.conv_seg.{weight,bias}``: the semantic classifier, whose stuff rows are also the
  initial stuff kernels, and
* ``stages.{s}.fc_cls.{weight,bias}``: each stage's classifier,

indexed by the internal class order (things, then stuff; :class:`KNetClassLayout`). With
``mode="copy_matching"`` the row of every target class whose name (case-insensitive) names a
source class of the same kind (thing/thing or stuff/stuff) is copied from that source row; other
rows keep the target model's fresh initialisation. ``mode="reinit"`` keeps every class-dependent row
freshly initialised.
"""
import logging
import re
from typing import Dict, List, Tuple

import torch

from sfnet_d2.modeling.meta_arch.knet.class_layout import KNetClassLayout

__all__ = ["CLASS_DEPENDENT_PATTERN", "transfer_knet_weights", "match_classes_by_name",
           "log_transfer_report", "transfer_checkpoint"]

logger = logging.getLogger(__name__)

CLASS_DEPENDENT_PATTERN = re.compile(
    r"^(kernel_head\.conv_seg|stages\.\d+\.fc_cls)\.(weight|bias)$")
MODES = ("copy_matching", "reinit")


def match_classes_by_name(source: KNetClassLayout, target: KNetClassLayout
                          ) -> List[Tuple[int, int, str]]:
    """(target internal index, source internal index, name) of the classes with the same name
    and kind (thing / stuff)."""
    src_names = [n.lower() for n in source.internal_class_names()]
    pairs = []
    for t_idx, name in enumerate(target.internal_class_names()):
        key = name.lower()
        if key not in src_names:
            continue
        s_idx = src_names.index(key)
        t_thing = t_idx < target.num_thing_classes
        s_thing = s_idx < source.num_thing_classes
        if t_thing != s_thing:
            logger.info(f"Class {name!r} is a {'thing' if s_thing else 'stuff'} class in the "
                        f"source and a {'thing' if t_thing else 'stuff'} class in the target: "
                        "re-initialised, not copied")
            continue
        pairs.append((t_idx, s_idx, name))
    return pairs


def transfer_knet_weights(source_state: Dict[str, torch.Tensor],
                          target_state: Dict[str, torch.Tensor], source: KNetClassLayout,
                          target: KNetClassLayout, mode: str = "copy_matching"
                          ) -> Tuple[Dict[str, torch.Tensor], Dict]:
    """
    Args:
        source_state: the trained model's state dict (source classes).
        target_state: a freshly initialised target model's state dict (target classes).
        source, target: the two class layouts.
        mode: "copy_matching" or "reinit" (MODEL.KNET.TRANSFER_CLASS_WEIGHTS).
    Returns:
        the new target state dict, and a report dict: "transferred" (tensor names),
        "copied_classes" [(target name, source name)], "reinitialized_classes" [names],
        "class_dependent" (tensor names).
    """
    if mode not in MODES:
        raise ValueError(f"MODEL.KNET.TRANSFER_CLASS_WEIGHTS={mode!r} is not one of {MODES}")
    missing = sorted(set(target_state) - set(source_state))
    unexpected = sorted(set(source_state) - set(target_state))
    if missing or unexpected:
        raise ValueError(
            "The source checkpoint is not a K-Net of the same architecture as the target config: "
            f"missing {missing[:8]}{' ...' if len(missing) > 8 else ''}, unexpected "
            f"{unexpected[:8]}{' ...' if len(unexpected) > 8 else ''} (same backbone, neck, "
            "MODEL.KNET.NUM_STAGES / FEAT_CHANNELS / NUM_PROPOSALS needed)"
        )
    pairs = match_classes_by_name(source, target) if mode == "copy_matching" else []
    t_rows = torch.tensor([t for t, _, _ in pairs], dtype=torch.long)
    s_rows = torch.tensor([s for _, s, _ in pairs], dtype=torch.long)
    out, transferred, class_dependent = {}, [], []
    for name, t_value in target_state.items():
        s_value = source_state[name]
        if CLASS_DEPENDENT_PATTERN.match(name):
            if t_value.shape[0] != target.num_classes or s_value.shape[0] != source.num_classes:
                raise ValueError(
                    f"{name}: {tuple(s_value.shape)} -> {tuple(t_value.shape)} does not have one "
                    f"row per class ({source.num_classes} -> {target.num_classes})"
                )
            if s_value.shape[1:] != t_value.shape[1:]:
                raise ValueError(f"{name}: row shapes differ, {tuple(s_value.shape)} vs "
                                 f"{tuple(t_value.shape)}")
            value = t_value.clone()
            if len(pairs):
                value[t_rows] = s_value[s_rows].to(value.dtype)
            out[name] = value
            class_dependent.append(name)
            continue
        if s_value.shape != t_value.shape:
            raise ValueError(
                f"{name}: source shape {tuple(s_value.shape)} differs from the target's "
                f"{tuple(t_value.shape)}, and it is not a class-dependent tensor"
            )
        out[name] = s_value.clone()
        transferred.append(name)
    copied = [(name, source.internal_class_names()[s]) for t, s, name in pairs]
    copied_names = {t for t, _, _ in pairs}
    reinit = [n for i, n in enumerate(target.internal_class_names()) if i not in copied_names]
    report = {"transferred": transferred, "copied_classes": copied,
              "reinitialized_classes": reinit, "class_dependent": class_dependent, "mode": mode}
    return out, report


def log_transfer_report(report: Dict, state: Dict[str, torch.Tensor], log=logger) -> None:
    n_params = sum(state[n].numel() for n in report["transferred"])
    log.info(f"Transferred {len(report['transferred'])} class-independent tensors "
             f"({n_params:,} values) unchanged")
    log.info(f"Class-dependent tensors ({report['mode']}): {', '.join(report['class_dependent'])}")
    copied = ", ".join(f"{t} <- {s}" for t, s in report["copied_classes"]) or "none"
    log.info(f"Copied the rows of {len(report['copied_classes'])} classes: {copied}")
    log.info(f"Re-initialised the rows of {len(report['reinitialized_classes'])} classes: "
             f"{', '.join(report['reinitialized_classes']) or 'none'}")


def transfer_checkpoint(source_cfg, target_cfg, source_file: str, output_file: str,
                        log=logger) -> Dict:
    """
    Write ``output_file`` = the model of ``source_file`` (trained with ``source_cfg``) transferred
    to ``target_cfg``'s classes (mode MODEL.KNET.TRANSFER_CLASS_WEIGHTS of ``target_cfg``), loadable
    as ``MODEL.WEIGHTS`` of ``target_cfg``; returns the report. The write is atomic.
    """
    from detectron2.modeling import build_model

    from sfnet_d2.engine import atomic_write_bytes
    from sfnet_d2.modeling.meta_arch.knet.meta_arch import knet_metadata_dataset

    try:
        checkpoint = torch.load(source_file, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (any unreadable file: say which and why)
        raise OSError(f"Cannot read the stage-1 checkpoint {source_file}: {e}") from e
    source_state = checkpoint.get("model", checkpoint)
    target_cfg = target_cfg.clone()
    target_cfg.defrost()
    target_cfg.MODEL.DEVICE = "cpu"
    target_cfg.MODEL.WEIGHTS = ""
    target_state = build_model(target_cfg).state_dict()
    source = KNetClassLayout.from_metadata(knet_metadata_dataset(source_cfg))
    target = KNetClassLayout.from_metadata(knet_metadata_dataset(target_cfg))
    state, report = transfer_knet_weights(source_state, target_state, source, target,
                                          target_cfg.MODEL.KNET.TRANSFER_CLASS_WEIGHTS)
    log.info(f"Initialising from {source_file} ({source.num_classes} classes) for "
             f"{target.num_classes} classes:")
    log_transfer_report(report, state, log)
    summary = {"source": source_file, "mode": report["mode"],
               "copied_classes": [list(p) for p in report["copied_classes"]],
               "reinitialized_classes": report["reinitialized_classes"]}
    atomic_write_bytes(output_file, lambda f: torch.save({"model": state,
                                                          "transfer": summary}, f))
    log.info(f"Wrote {output_file}")
    return report
