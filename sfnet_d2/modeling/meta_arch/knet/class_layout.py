"""
K-Net's class order from detectron2 dataset metadata.

K-Net hard-wires "things first": internal labels ``[0, T)`` are thing classes and ``[T, T+S)`` stuff
classes (one stuff kernel per stuff class, tied to its label), see ZwwWayne/K-Net@5e50ee5
knet/det/utils.py ``sem2ins_masks``, knet/det/kernel_update_head.py and
knet/det/kernel_iter_head.py ``get_panoptic``. detectron2's contiguous ids put things first for
COCO panoptic but stuff first for Cityscapes panoptic (trainIds 0-10 stuff, 11-18 things).
``KNetClassLayout`` reads ``thing_dataset_id_to_contiguous_id`` /
``stuff_dataset_id_to_contiguous_id`` and maps between the dataset's contiguous ids and the
internal order (things, then stuff, each in increasing contiguous id), so the model has no
dataset-specific cases.
"""
from typing import List

import torch
from detectron2.data import MetadataCatalog

__all__ = ["KNetClassLayout"]


class KNetClassLayout:
    def __init__(self, thing_contiguous_ids: List[int], stuff_contiguous_ids: List[int],
                 class_names: List[str] = None):
        """
        Args:
            thing_contiguous_ids / stuff_contiguous_ids: the dataset's contiguous ids of its thing
                and stuff classes; together they must be exactly 0..C-1.
            class_names: C names indexed by contiguous id (for weight transfer and logs).
        """
        things, stuff = sorted(set(thing_contiguous_ids)), sorted(set(stuff_contiguous_ids))
        all_ids = sorted(things + stuff)
        if all_ids != list(range(len(all_ids))) or not all_ids:
            raise ValueError(
                f"Thing ids {things} and stuff ids {stuff} must together be 0..C-1 without overlap "
                "(dataset metadata thing_/stuff_dataset_id_to_contiguous_id)"
            )
        self.thing_ids = things
        self.stuff_ids = stuff
        self.num_thing_classes = len(things)
        self.num_stuff_classes = len(stuff)
        self.num_classes = len(all_ids)
        self.internal_to_contiguous = things + stuff
        self.contiguous_to_internal = [0] * self.num_classes
        for internal, contiguous in enumerate(self.internal_to_contiguous):
            self.contiguous_to_internal[contiguous] = internal
        if class_names is not None and len(class_names) != self.num_classes:
            raise ValueError(f"{len(class_names)} class names for {self.num_classes} classes")
        self.class_names = list(class_names) if class_names is not None else None

    @classmethod
    def from_metadata(cls, dataset_name: str) -> "KNetClassLayout":
        meta = MetadataCatalog.get(dataset_name)
        thing_map = meta.get("thing_dataset_id_to_contiguous_id", None)
        stuff_map = meta.get("stuff_dataset_id_to_contiguous_id", None)
        if thing_map is None or stuff_map is None:
            raise ValueError(
                f"Dataset {dataset_name!r} has no thing_dataset_id_to_contiguous_id / "
                "stuff_dataset_id_to_contiguous_id metadata: K-Net needs a panoptic dataset "
                "(e.g. coco_2017_train_panoptic, cityscapes_fine_panoptic_train, or one "
                "registered with sfnet_d2.data.register_coco_panoptic_by_paths)"
            )
        num_classes = len(thing_map) + len(stuff_map)
        names = None
        # detectron2's "standard" panoptic metadata lists every class under both keys
        for key in ("stuff_classes", "thing_classes"):
            candidate = meta.get(key, None)
            if candidate is not None and len(candidate) == num_classes:
                names = list(candidate)
                break
        return cls(list(thing_map.values()), list(stuff_map.values()), names)

    def is_thing_contiguous(self, contiguous_id: int) -> bool:
        return self.contiguous_to_internal[contiguous_id] < self.num_thing_classes

    def to_internal(self, contiguous: torch.Tensor) -> torch.Tensor:
        lut = torch.as_tensor(self.contiguous_to_internal, dtype=torch.int64,
                              device=contiguous.device)
        return lut[contiguous.long()]

    def to_contiguous(self, internal: torch.Tensor) -> torch.Tensor:
        lut = torch.as_tensor(self.internal_to_contiguous, dtype=torch.int64,
                              device=internal.device)
        return lut[internal.long()]

    def internal_class_names(self) -> List[str]:
        if self.class_names is None:
            raise ValueError("This dataset's metadata gives no class names")
        return [self.class_names[c] for c in self.internal_to_contiguous]
