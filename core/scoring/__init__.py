"""The one forward pass every consumer calls, the batches it reads, the engines that run it, the metrics."""
