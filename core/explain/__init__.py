"""Heatmaps: the CAM methods, overlays and pages, the one-image explainer, and the audit (sanity, ROAD, blank maps)."""
