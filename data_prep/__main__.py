"""`python -m data_prep COMMAND ...`: raw downloads to manifests, statistics, report labeling, demo data."""
from __future__ import annotations

import sys

from cxrcore.cli import dispatch

# command -> (module, one-line help); each module defines add_arguments(parser) and main(args) -> int
COMMANDS = {
    "manifest": ("data_prep.manifests", "read a dataset in its real on-disk layout and write its manifest"),
    "stats": ("data_prep.stats", "label and demographic statistics of the real CheXpert / ChestX-ray14 tables"),
    "label-reports": ("data_prep.report_labeler", "label free-text reports with the keyword labeler of paper 000"),
    "eval-labeler": ("data_prep.labeler_eval", "score the report labelers on the real Indiana University reports"),
    "dicom": ("data_prep.dicom", "convert DICOM radiographs to 8-bit PNG"),
    "synth": ("data_prep.synth", "write the synthetic demo sites in the real datasets' layouts"),
    "real-layout": ("data_prep.synth.real_layout",
                    "copy a demo tree as the real downloads hold it, without its synthetic ground truth"),
    "difficulty": ("data_prep.synth.difficulty",
                   "how hard the demo data is: held-out AUROC of an independent tiny CNN and thumbnail LR"),
}

if __name__ == "__main__":
    sys.exit(dispatch(COMMANDS, "python -m data_prep", __doc__))
