"""Scoring on Ray Data: a pool of actors, each loading the model folder once.

Each actor rebuilds the driver's :class:`~pneumocam.scoring.predictor.Predictor` (its folder, its
views) and calls its ``score``, the local engine's own code, on its batch of paths. What comes back is
merged by path on the driver (Ray does not keep order), checked to cover every
file exactly once, and returned in input order as the local engine does.

- Unreadable files are caught per file (the ``error`` column), never per block:
  Ray's ``max_errored_blocks`` would drop a whole block without a word.
- A worker that dies is restarted and its batch is run again (Ray Data's
  default for actor pools); a batch's rows reach the driver only once the
  batch has finished, and rows are keyed by path, so nothing is counted twice.
  If a file is still missing at the end, the run fails rather than report on
  fewer files.
- Actors get the model's folder path, never a model object: a Keras model does
  not pickle. The folder must be readable on every node (shared storage).

TensorFlow and the model are imported inside the actors' methods, not here: the
driver imports this module to start the pool, and each worker process starts
its own TensorFlow with the threads it is given.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

import pneumocam
from pneumocam.errors import EngineError, InputError, ModelLoadError
from pneumocam.options import RAY_INSTALL

if TYPE_CHECKING:
    from pneumocam.scoring.forward import Scores
    from pneumocam.scoring.predictor import Predictor

PATH = "path"
ERROR = "error"
PROBABILITIES = "probabilities"
OOD_SCORE = "ood_score"  # NaN where unreadable or the model has no validity statistics
NOTES = "notes"  # the sure validity checks' reasons, joined
PROBE_SECONDS = 5.0
CPUS_PER_WORKER = 1  # each actor's Ray reservation, and so its TensorFlow threads


def package_folder() -> str:
    """This package's folder for Ray's ``py_modules``, under its import name.

    Ray ships a folder under its own name: installed, that is ``pneumocam/``; a checkout's ``core/`` is copied
    to a temporary ``pneumocam/`` first (removed when this process ends).
    """
    here = Path(pneumocam.__file__).resolve().parent
    if here.name == pneumocam.__name__:
        return str(here)
    staging = Path(tempfile.mkdtemp(prefix="pneumocam-ray-"))
    atexit.register(shutil.rmtree, staging, ignore_errors=True)
    shipped = staging / pneumocam.__name__
    shutil.copytree(here, shipped, ignore=shutil.ignore_patterns("__pycache__"))
    return str(shipped)


def import_ray() -> Any:
    """Ray, or the one line that says how to install it."""
    # Ray's notices stay in its log files (/tmp/ray/session_*/logs); the user's settings win. Among them:
    # every actor pool warns that its constructor arguments live in the object store (ray#53727).
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "ERROR")
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise EngineError(f"--engine ray needs Ray Data, which is not installed: {RAY_INSTALL}") from exc
    return ray


def pool_size(cluster_cpus: float, workers: int | None) -> int:
    """Actors to start, one CPU each: by default one per CPU the cluster reports.

    The files are listed on the driver and decoded inside the actors, so no
    read stage needs a CPU of its own. (A pipeline with Ray's own file readers
    does: there, one-CPU actors on every CPU starve the readers and the job
    hangs.)
    """
    cpus = max(1, math.floor(cluster_cpus))
    if workers is None:
        return cpus
    if workers > cpus:
        raise InputError(f"--workers {workers} needs {workers} CPUs; the cluster has {cluster_cpus:g}")
    return workers


class BatchScorer:
    """The Ray Data actor: loads the model folder once, then scores batches of paths."""

    def __init__(
        self, model_dir: str, weights_sha256: str | None, threads: int = CPUS_PER_WORKER, views: list[str] | None = None
    ) -> None:
        from pneumocam.runtime import import_tensorflow_quietly

        import_tensorflow_quietly()
        import tensorflow as tf

        # Ray sets only OMP_NUM_THREADS; TensorFlow would otherwise use every core of the node.
        # A fresh actor process has not started TensorFlow yet; a process that has keeps its threads.
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError:
            pass
        from pneumocam.model.artifact import load_artifact
        from pneumocam.model.views import check_views
        from pneumocam.scoring.predictor import Predictor

        loaded = load_artifact(model_dir)
        if weights_sha256 and loaded.meta.weights_sha256 != weights_sha256:
            raise ModelLoadError(f"the model in {model_dir} on this worker is not the one the driver loaded")
        # The driver's predictor, rebuilt here: its folder and its views (--no-views over the folder's own).
        self.predictor = Predictor(loaded, check_views(views)) if views is not None else Predictor.of(loaded)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        paths = [str(p) for p in batch[PATH]]
        scores = self.predictor.score(paths, batch_size=max(1, len(paths)))
        return to_rows(paths, scores, len(self.predictor.classes))


def to_rows(paths: Sequence[str], scores: Scores, n_classes: int) -> dict[str, np.ndarray]:
    """One row per input path: probabilities (NaN if unreadable), validity, and the reason it was not read."""
    probs = np.full((len(paths), n_classes), np.nan, np.float32)
    ood = np.full(len(paths), np.nan, np.float32)
    errors, notes = [""] * len(paths), [""] * len(paths)
    where = {p: i for i, p in enumerate(paths)}
    for k, (p, row) in enumerate(zip(scores.paths, scores.probabilities)):
        i = where[str(p)]
        probs[i] = row
        notes[i] = scores.notes[k] if scores.notes else ""
        if scores.ood_scores is not None:
            ood[i] = scores.ood_scores[k]
    for p, reason in scores.skipped:
        errors[where[str(p)]] = reason
    return {
        PATH: np.array(paths, dtype=object),
        ERROR: np.array(errors, dtype=object),
        PROBABILITIES: probs,
        OOD_SCORE: ood,
        NOTES: np.array(notes, dtype=object),
    }


def worker_path(path: str | Path) -> str:
    """The path a worker reads: absolute (workers have their own working folder), symlinks kept."""
    return str(Path(path).absolute())


def merge_rows(paths: Sequence[Path], rows: dict[str, tuple], n_classes: int, has_stats: bool = False) -> Scores:
    """Rows keyed by worker path back into a :class:`Scores` of ``paths``, in their order; a missing file fails.

    A row is ``(error, probabilities, ood_score, notes)``; ``has_stats``: the model has validity statistics.
    """
    from pneumocam.scoring.forward import Scores

    missing = [p for p in paths if worker_path(p) not in rows]
    if missing:
        raise EngineError(f"the Ray run returned no result for {len(missing)} file(s), e.g. {missing[0]}")
    kept: list[Path] = []
    probs: list[np.ndarray] = []
    skipped: list[tuple[Path, str]] = []
    ood: list[float] = []
    notes: list[str] = []
    for p in paths:
        error, row, score, note = rows[worker_path(p)]
        if error:
            skipped.append((p, error))
        else:
            kept.append(p)
            probs.append(row)
            ood.append(score)
            notes.append(note)
    arr = np.stack(probs).astype(np.float32) if probs else np.zeros((0, n_classes), np.float32)
    scores = np.array(ood, np.float32) if has_stats else None
    return Scores(kept, arr, skipped, ood_scores=scores, notes=notes)


class RayEngine:
    """Ray Data over a local Ray (default) or the cluster at ``address`` (or ``RAY_ADDRESS``)."""

    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None) -> None:
        self.ray = import_ray()
        self.address = address or os.environ.get("RAY_ADDRESS")
        self.requested_workers = workers
        self.workers: int | None = None

    def connect(self) -> None:
        """Join the cluster (or start a local one); an address that does not answer is a one-line error."""
        ray = self.ray
        if ray.is_initialized():
            return
        if self.address:
            probe(self.address)
        logging.getLogger("ray").setLevel(logging.ERROR)
        try:
            ray.init(
                address=self.address,
                include_dashboard=False,
                logging_level=logging.ERROR,
                log_to_driver=False,
                configure_logging=True,
                # Ship this package to the workers: a cluster needs only the requirements installed.
                runtime_env={"py_modules": [package_folder()]},
            )
        except (ConnectionError, TimeoutError, ValueError) as exc:
            where = self.address or "a local Ray"
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise EngineError(f"cannot connect to Ray at {where}: {first}") from exc

    def score(
        self,
        predictor: Predictor,
        paths: Sequence[Path],
        batch_size: int,
        on_batch: Callable[[int], None] | None = None,
        features: bool = False,
    ) -> Scores:
        """Probabilities only: the pooled features stay on the workers (``features`` is refused)."""
        if features:
            raise InputError("the Ray engine returns probabilities only; score features on the local engine")
        ray = self.ray
        self.connect()
        cpus = ray.cluster_resources().get("CPU", 1)
        self.workers = pool_size(cpus, self.requested_workers)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.enable_operator_progress_bars = False
        paths = [Path(p) for p in paths]
        ds = ray.data.from_items([{PATH: worker_path(p)} for p in paths])
        ds = ds.map_batches(
            BatchScorer,
            fn_constructor_kwargs={
                "model_dir": str(Path(predictor.directory).resolve()),
                "weights_sha256": predictor.meta.weights_sha256,
                "threads": CPUS_PER_WORKER,
                "views": list(predictor.views),
            },
            batch_size=batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=self.workers),
            num_cpus=CPUS_PER_WORKER,
        )
        rows: dict[str, tuple] = {}
        try:
            for out in ds.iter_batches(batch_size=None, batch_format="numpy"):
                for p, error, row, ood, note in zip(
                    out[PATH], out[ERROR], out[PROBABILITIES], out[OOD_SCORE], out[NOTES]
                ):
                    rows[str(p)] = (str(error), np.asarray(row, np.float32), float(ood), str(note))
                if on_batch:
                    on_batch(len(out[PATH]))
        except ray.exceptions.RayError as exc:
            raise known_worker_error(exc) from exc
        return merge_rows(paths, rows, len(predictor.meta.classes), predictor.validity_stats is not None)

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.ray.__version__,
            "address": self.address or "local",
            "workers": self.workers,
        }


def probe(address: str, timeout: float = PROBE_SECONDS) -> None:
    """Fail fast on a ``host:port`` that does not answer: ``ray.init`` would retry it for minutes."""
    target = address.split("://", 1)[-1]
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        return  # "auto" and other forms Ray resolves itself
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        hint = "is the cluster up and its port open?"
        raise EngineError(f"cannot connect to Ray at {address}: {reason} ({hint})") from exc


def known_worker_error(exc: BaseException) -> BaseException:
    """A worker's model folder it cannot read as our one-line error; anything else (a bug) as is.

    Unreadable images never get here: the actors catch them per file.
    """
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, ModelLoadError):
            return EngineError(f"a Ray worker failed: {cause}")
        cause = getattr(cause, "cause", None) or cause.__cause__
    marker = f"{ModelLoadError.__name__}: "
    if marker in str(exc):
        return EngineError(f"a Ray worker failed: {str(exc).split(marker, 1)[1].strip().splitlines()[0]}")
    return exc
