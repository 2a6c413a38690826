"""Building blocks of the multi-source domain-adaptive re-ID workload (RDSBN + MDIF).

Pure torch / numpy / scikit-learn pieces; the workload that assembles them lives elsewhere. Each
module follows a section of ``notes/workloads-precise.md`` §1 (Bai et al., CVPR 2021, as the
unofficial ``MSUDA_REID`` code runs it).
"""
