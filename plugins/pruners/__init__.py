"""Channel pruners (kind ``pruner``): ``structural`` (Torch-Pruning) and ``mask`` (torch.nn.utils.prune)."""
