"""The training engine: configuration, launch, checkpoints and the one trainer loop."""
