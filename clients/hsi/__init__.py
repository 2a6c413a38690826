"""Hyperspectral segmentation: band-group CNN features, a deep CRF, a deconvolution refinement
(Alam et al., IEEE TGRS 2019; ``notes/workloads-precise.md`` §4), federated over scene tiles."""
