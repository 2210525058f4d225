"""NSR — Neuron Steadiness Regularization (Fu et al., NeurIPS 2022), its measures, models, data and training.

The method is :class:`NeuronSteadiness`; the measures are :func:`intra_class_variance`,
:func:`aggregated_variance`, :func:`consistency_of_representations` and :func:`select_layer`. Models, data,
training loops, experiments and result tables live in the submodules ``nsr.models``, ``nsr.data``,
``nsr.train``, ``nsr.experiments`` and ``nsr.results``.
"""

from .measures import aggregated_variance, consistency_of_representations, intra_class_variance, select_layer
from .regularizer import NeuronSteadiness

__all__ = [
    "NeuronSteadiness",
    "intra_class_variance",
    "aggregated_variance",
    "consistency_of_representations",
    "select_layer",
]
__version__ = "0.1.0"
