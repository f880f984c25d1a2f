"""Data: ISIC folder layouts, the training ``Dataset``, the synthetic generator and downloads.

Downloaded and generated data sets live in subfolders of this folder (``data/ISIC2018/``,
``data/synthetic/``), which git ignores.
"""

import os

# albumentations checks PyPI for updates at import; training must make no network calls.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
