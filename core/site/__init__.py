"""A model for a new site: unlabelled adaptation, labelled calibration, a re-fitted head, and the folders they write."""
