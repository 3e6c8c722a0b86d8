"""
Alignment of a coarse feature onto a fine one: the flow warp, FAM and GD-FAM
(``flow_alignment``), the gather warp of the optimised CPU path (``gather_warp``), deformable
alignment (``deform_align``), the FAM's feature upsampling variants (``feature_upsample``) and the
per-level choice between them (``build``).
"""
from sfnet_d2.modeling.alignment.flow_alignment import (FlowAlignModule, GatedDualFlowAlignModule,
                                                        flow_warp)
from sfnet_d2.modeling.alignment.deform_align import DeformableAlignModule
from sfnet_d2.modeling.alignment.build import build_align_module, merge_coarse_into_fine
