"""Images in: one reader per file format, the resize to model input, labelled folders."""
