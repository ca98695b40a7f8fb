"""The network pipeline: models, data, noise-aware training, weights ⇄ conductances, evaluation."""
