"""Owns distillation: losses, setups (how a batch becomes a loss) and the training loop."""
