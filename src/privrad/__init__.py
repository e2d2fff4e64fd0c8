"""privrad: differentially private LoRA fine-tuning on radiology reports.

The public API is small:

* :func:`privrad.data.load_dataset` — reports and labels in one in-memory form;
* :func:`privrad.run` — one training run (dataset × model × method × ε × seed) → run folder;
* :mod:`privrad.study` — grids of runs executed as papermill notebooks;
* :mod:`privrad.stats` — statistics across run folders.
"""

import warnings as _warnings

from privrad.errors import install_warning_format

__version__ = "0.2.0"
install_warning_format()
# tqdm.auto (imported by transformers) warns in a kernel without ipywidgets, on every run page
_warnings.filterwarnings("ignore", message="IProgress not found", module="tqdm")


def run(config, **kwargs):
    """Run one training configuration and write its run folder (see :mod:`privrad.pipeline`)."""
    from privrad.pipeline import run as _run

    return _run(config, **kwargs)


__all__ = ["__version__", "run"]
