"""Process-level set-up shared by the CLI and the Space."""

from __future__ import annotations

import os
import sys


def import_tensorflow_quietly() -> None:
    """Import TensorFlow with its C++ start-up notices (oneDNN, absl) kept off the terminal.

    Those lines go straight to file descriptor 2 before any Python logging
    exists, so they are hidden by pointing fd 2 at /dev/null for the import
    alone. Python errors raised by the import still surface normally.
    """
    if "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import tensorflow
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    tensorflow.get_logger().setLevel("ERROR")  # retracing advice and the like: notes for developers
