"""Hydra plugins of federated_research (Hydra loads sweepers only from `hydra_plugins`)."""
