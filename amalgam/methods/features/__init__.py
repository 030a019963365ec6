"""Methods that amalgamate the teachers' intermediate features as well as their outputs (layers paired by depth in
``layers``)."""

from amalgam.methods.features import (  # noqa: F401  (importing registers the methods)
    attention, autoencoder, cfl, clusters, dissimilarity, feed, knowledge_flow, probe, two_teacher,
)
