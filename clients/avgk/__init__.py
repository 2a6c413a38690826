"""Average-K classification with a two-head loss (Garcin et al., WACV 2025), federated."""
