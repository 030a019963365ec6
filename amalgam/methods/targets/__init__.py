"""Methods whose student learns the teachers' outputs combined in the union label space: fixed weights, a chosen
teacher, learned or adaptive trust, and the references trained on labels alone."""

from amalgam.methods.targets import (  # noqa: F401  (importing registers the methods)
    adaptive, confidence, experts, selective, soft_targets, stochastic, supervised, trust, wsl,
)
