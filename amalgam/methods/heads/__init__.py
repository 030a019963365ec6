"""Methods that train a student with several named heads on one body: one per teacher (ensembles) or per task."""

from amalgam.methods.heads import branches, hydra, ods, soka  # noqa: F401  (importing registers the methods)
