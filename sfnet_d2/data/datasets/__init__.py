"""
Dataset registration (runs when ``sfnet_d2`` is imported); layouts and preparation: docs/DATASETS.md.

Every dataset is registered under ``$DETECTRON2_DATASETS`` (default ``datasets``) with a lazy,
checked loader: nothing on disk is read at import, and loading a missing or incomplete dataset
raises a FileNotFoundError (:class:`DatasetLayoutError`) naming the missing folder or file, the
expected layout and the command that prepares it. ``register_all_datasets(root)`` registers the
same names under another root (the tests use it with a temporary folder).

=========================================  ==============  ====================================
names                                      classes         module
=========================================  ==============  ====================================
cityscapes_fine_sem_seg_{train,val,test}   19              cityscapes (evaluator cityscapes_sem_seg)
cityscapes_coarse_sem_seg_train_extra      19              cityscapes
sfnet_demo_cityscapes_fine_sem_seg_*       19              cityscapes (synthetic demo data)
mapillary_vistas_19_sem_seg_{train,val}    19 (from 66)    mapillary_vistas
idd_19_sem_seg_{train,val}                 19 (from 40)    idd
bdd100k_sem_seg_{train,val}                19              bdd100k
uds_sem_seg_{train,val}                    19              uds (the four above, united)
camvid_sem_seg_{train,val,test}            11              camvid
ade20k_sem_seg_{train,val}                 150             ade20k (detectron2's, checked)
cityscapes_fine_panoptic_{train,val}       19 (panoptic)   panoptic (detectron2's
                                                           names, our loader)
sfnet_demo_{coco,cityscapes_fine}_panoptic_*  8 / 19       panoptic (demo data)
=========================================  ==============  ====================================
"""
from sfnet_d2.data.datasets.ade20k import load_ade20k_checked, register_ade20k
from sfnet_d2.data.datasets.bdd100k import find_bdd100k_files, load_bdd100k, register_bdd100k
from sfnet_d2.data.datasets.camvid import find_camvid_files, load_camvid, register_camvid
from sfnet_d2.data.datasets.cityscapes import (
    DEMO_ROOT_NAME,
    find_cityscapes_files,
    load_cityscapes_coarse,
    load_cityscapes_semantic_checked,
    register_cityscapes,
    register_cityscapes_semantic,
)
from sfnet_d2.data.datasets.common import DatasetLayoutError, cityscapes19_metadata, datasets_root
from sfnet_d2.data.datasets.idd import find_idd_19_files, load_idd_19, register_idd_19
from sfnet_d2.data.datasets.label_mapping import LabelMapping, load_label_mapping
from sfnet_d2.data.datasets.mapillary_vistas import (
    find_mapillary_vistas_19_files,
    load_mapillary_vistas_19,
    register_mapillary_vistas_19,
)
from sfnet_d2.data.datasets.uds import PAPER_TABLE2, check_uds, load_uds, register_uds

__all__ = [
    "DEMO_ROOT_NAME",
    "DatasetLayoutError",
    "LabelMapping",
    "PAPER_TABLE2",
    "check_uds",
    "cityscapes19_metadata",
    "datasets_root",
    "find_bdd100k_files",
    "find_camvid_files",
    "find_cityscapes_files",
    "find_idd_19_files",
    "find_mapillary_vistas_19_files",
    "load_ade20k_checked",
    "load_bdd100k",
    "load_camvid",
    "load_cityscapes_coarse",
    "load_cityscapes_semantic_checked",
    "load_idd_19",
    "load_label_mapping",
    "load_mapillary_vistas_19",
    "load_uds",
    "register_all_datasets",
    "register_cityscapes_semantic",
]


def register_all_datasets(root: str):
    """Register every dataset name of this package and the panoptic ones of
    ``sfnet_d2.data.datasets.panoptic`` under ``root`` (replacing earlier ones)."""
    # imported here: the panoptic module builds on this package's Cityscapes helpers
    from sfnet_d2.data.datasets.panoptic import register_panoptic_datasets

    register_cityscapes(root)
    register_mapillary_vistas_19(root)
    register_idd_19(root)
    register_bdd100k(root)
    register_uds(root)
    register_camvid(root)
    register_ade20k(root)
    register_panoptic_datasets(root)


register_all_datasets(datasets_root())
