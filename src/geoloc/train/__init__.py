"""Training: contrastive loss, group-aware batches, and the run loop."""
