"""`python -m cxrcore COMMAND ...`: train a configured run, run a chapter's experiment, benchmark training, or list
and fetch the ImageNet weights."""
from __future__ import annotations

import sys

from cxrcore.cli import dispatch

# command -> (module, one-line help); each module defines add_arguments(parser) and main(args) -> int
COMMANDS = {
    "train": ("cxrcore.runner", "run one experiment from a JSON config, cached like the book's runs"),
    "bench": ("cxrcore.bench", "training images/s of the whole pipeline and of the model alone"),
    "experiment": ("cxrcore.experiments.command", "run a chapter's experiment (or read its runs) and print its table"),
    "weights": ("cxrcore.weights", "list the ImageNet weights in the local torch hub cache, or fetch them"),
}

if __name__ == "__main__":
    sys.exit(dispatch(COMMANDS, "python -m cxrcore", __doc__))
