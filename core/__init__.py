"""PneumoCAM core: everything the CLI and the Space share.

Model building and loading, image reading, preprocessing, Grad-CAM, data
scanning, metrics, plots and report writing live here; ``cli`` and ``space``
only parse arguments and present results.
"""

__version__ = "0.1.0"
