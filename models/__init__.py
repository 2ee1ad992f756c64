"""What work one layer does: model shapes, precisions and the per-layer op list."""
