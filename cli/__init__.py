"""PneumoCAM's command line (``python -m cli``): a thin Click layer over ``core``."""
