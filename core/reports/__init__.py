"""What the commands report: evaluation and its site protocols, stress, galleries, the site curve, the card, MLflow."""
