"""Applications built on radvar's core: the paper's models and data (:mod:`.zoo`,
:mod:`.datasets`), the IRNN for sequences (:mod:`.rnn`) and PDE-constrained control
(:mod:`.pde`). They use the core packages and nothing in the core imports them.

``radvar.zoo``, ``radvar.rnn`` and ``radvar.pde`` are the short public names of these
modules (the same module objects).
"""

from . import datasets, pde, rnn, zoo

__all__ = ["datasets", "pde", "rnn", "zoo"]
