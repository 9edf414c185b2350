"""Where a folder is scored: in this process, or on a Ray cluster (:mod:`pneumocam.scoring.ray_engine`).

Both engines run the same decode, preprocess and forward code
(:meth:`pneumocam.scoring.predictor.Predictor.score`) and return the same :class:`Scores`, in
the order of the paths given, so one set of report writers serves both.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pneumocam.errors import InputError
from pneumocam.options import DEFAULT_ENGINE, ENGINES

if TYPE_CHECKING:
    from pneumocam.scoring.forward import Scores
    from pneumocam.scoring.predictor import Predictor
    from pneumocam.scoring.ray_engine import RayEngine


class LocalEngine:
    """This process: tf.data decoding in threads, one forward pass per batch.

    An engine has ``name``, ``score(predictor, paths, batch_size, on_batch, features)`` and ``info()`` (the
    report's provenance); :class:`pneumocam.scoring.ray_engine.RayEngine` is the other.
    """

    name = "local"

    def score(self, predictor: Predictor, paths: Sequence[Path], *args: Any, **kwargs: Any) -> Scores:
        """:meth:`pneumocam.scoring.predictor.Predictor.score` itself: batch size, progress, features."""
        return predictor.score(paths, *args, **kwargs)

    def info(self) -> dict[str, Any]:
        import pneumocam

        return {"name": self.name, "version": pneumocam.__version__}


def make_engine(
    name: str = DEFAULT_ENGINE, address: str | None = None, workers: int | None = None
) -> LocalEngine | RayEngine:
    """The engine a user named; Ray is imported (and its absence reported) only when asked for."""
    if name == "local":
        if address or workers:
            raise InputError("--ray-address and --workers apply to --engine ray only")
        return LocalEngine()
    if name == "ray":
        from pneumocam.scoring.ray_engine import RayEngine  # an optional install: only when asked for

        engine = RayEngine(address=address, workers=workers)
        engine.connect()  # before the model loads: a cluster that does not answer fails in seconds
        return engine
    raise InputError(f"unknown engine {name!r}; use one of {', '.join(ENGINES)}")
