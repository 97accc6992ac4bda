"""Training blocks: models, losses, optimizer and schedule, the loop, the data path, distribution, hardware policy."""
