"""Open domain generalisation: DAML (Shu et al., CVPR 2021), federated (workload ``daml``)."""
