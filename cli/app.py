"""The ``python -m cli`` registry: the group, its error handling, and one module per command group.

Commands parse arguments and print; the work is in ``core``. Each module holds
one group of commands (``evaluate.py``: evaluate, stress, gallery; ``site.py``:
adapt, calibrate, tune, site-curve; ``audit.py``; ``predict.py``; ``train.py``; ``data.py``; ``hub.py``:
model-card, publish, deploy-space); the options they share are typed once in
``common.py``. Commands import ``core`` inside their bodies: ``--help`` and a
mistake in the arguments are answered before TensorFlow loads (``tests/test_cli.py``).
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import click

from pneumocam import __version__
from pneumocam.errors import PneumoCAMError
from pneumocam.paths import ENV_DEBUG

from . import audit, data, evaluate, hub, predict, site, train
from .common import EXIT_ERROR

COMMANDS = (
    data.prepare_data,
    evaluate.evaluate,
    evaluate.stress,
    evaluate.gallery,
    audit.audit,
    predict.predict,
    site.adapt,
    site.calibrate,
    site.tune,
    site.site_curve,
    train.train,
    train.fit_validity,
    train.fit_conformal,
    train.choose_views,
    hub.model_card_cmd,
    hub.publish,
    hub.deploy_space,
)


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM unwinds like Ctrl-C, so staging folders and temporary files are cleaned up."""
    sys.exit(128 + signum)


class Group(click.Group):
    """Turns our errors (what the user can fix) into one line on stderr and exit code 1.

    Anything else is a bug and keeps its traceback; ``PNEUMOCAM_DEBUG=1`` shows
    the traceback of our errors too.
    """

    def invoke(self, ctx: click.Context) -> Any:
        signal.signal(signal.SIGTERM, _terminate)
        try:
            return super().invoke(ctx)
        except PneumoCAMError as exc:
            if os.environ.get(ENV_DEBUG, "") not in ("", "0"):
                raise
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_ERROR)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name=None, version=__version__, prog_name="pneumocam")
def main() -> None:
    """PneumoCAM: explainable triage of pediatric chest X-rays (BACTERIA / NORMAL / VIRUS).

    A MobileNetV2 model sorts each X-ray into bacterial pneumonia, normal or viral
    pneumonia; Grad-CAM heatmaps of the last conv layers show which regions drove
    the call. Research tool, not a medical device.

    Exit codes: 0 success, 1 an input or model problem (one line on stderr), 2 bad usage.
    """


for _command in COMMANDS:
    main.add_command(_command)
