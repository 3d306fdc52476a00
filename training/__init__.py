"""Training side of the pipeline: the PyTorch model, data, losses and trainer."""
