"""Training: recipes, augmentations, the two stages on cached activations, consistency, the choice of views."""
