"""The one place that prints: `say()`, like Keras' `io_utils.print_msg`."""

from __future__ import annotations

import logging
import sys

import keras

logger = logging.getLogger("keras_ckpt")


def say(message: str) -> None:
    """Prints `message` to stdout when Keras logs interactively, else to the logger."""
    if keras.config.is_interactive_logging_enabled():
        sys.stdout.write(message + "\n")
        sys.stdout.flush()
    else:
        logger.info(message)
