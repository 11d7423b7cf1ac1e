"""reluinv: invariance and inverse stability of ReLU networks, studied through their inverse.

Public API (everything else lives in topic modules)::

    reluinv.preimage(A, b, y, lower=None, upper=None)   # Theorem 4 / Algorithm 1, with certificates
    reluinv.preimage(A, b, y, hint=x)                   # the same, x (say, y's input) checked as a point
    reluinv.layer_preimage(module, x)                   # the same for torch Linear / Conv2d
    reluinv.preimage_batch(A, b, Y)                     # the same for many outputs of one layer
    reluinv.PrecisionWarning                            # an "empty" that float32 rounding of y explains
    reluinv.is_omnidirectional(A)                       # Definition 1 / Theorem 5
    reluinv.linearize(model, x, upto=None)              # (J, c) on x's linear region (Definition 7)
    reluinv.activation_pattern(model, x)                # the index sets I^l of Definition 7
    reluinv.spectra(model, x)                           # singular values of every prefix (Section 3.2)
    reluinv.check_lemma8(A, I), reluinv.lemma9_curve(model, x, layer, cs), reluinv.relu_effect(model, x)
    reluinv.invariance_search(model, x, target, layer=...)   # Appendix A7 and beyond
    reluinv.network_preimage(model, x, layer)           # exact preimage kind across layers
    reluinv.preimage_extent(model, x, layer, ...)       # how far x' can move inside the preimage
"""

from .geometry import OmniCertificate, is_omnidirectional, omnidirectional_certificate
from .invariance import InvarianceResult, invariance_search, network_preimage, preimage_extent
from .network import activation_pattern, linearize
from .preimage import PrecisionWarning, Preimage, PreimageCertificate, layer_preimage, preimage
from .preimage_batch import preimage_batch
from .stability import LayerSpectrum, check_lemma8, lemma9_curve, relu_effect, spectra

__all__ = [
    "InvarianceResult",
    "LayerSpectrum",
    "OmniCertificate",
    "PrecisionWarning",
    "Preimage",
    "PreimageCertificate",
    "activation_pattern",
    "check_lemma8",
    "invariance_search",
    "is_omnidirectional",
    "layer_preimage",
    "lemma9_curve",
    "linearize",
    "network_preimage",
    "omnidirectional_certificate",
    "preimage",
    "preimage_batch",
    "preimage_extent",
    "relu_effect",
    "spectra",
]
__version__ = "0.1.0"
