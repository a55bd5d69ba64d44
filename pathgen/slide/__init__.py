"""Whole-slide images: open them, find the tissue, plan and read patches, draw a QC picture."""

from pathgen.slide.grid import PatchPlan, plan_patches, read_patch
from pathgen.slide.qc import render_qc
from pathgen.slide.reader import Slide, open_slide
from pathgen.slide.tissue import detect_tissue

__all__ = ["open_slide", "Slide", "detect_tissue", "plan_patches", "PatchPlan", "read_patch", "render_qc"]
