"""reluinv: invariance and inverse stability of ReLU networks, studied through their inverse.

Public API (everything else lives in private or topic modules)::

    reluinv.preimage(A, b, y, lower=None, upper=None)   # Theorem 4 / Algorithm 1, with certificates
    reluinv.layer_preimage(module, x)                   # the same for torch Linear / Conv2d
    reluinv.is_omnidirectional(A)                       # Definition 1 / Theorem 5
"""

from .geometry import OmniCertificate, is_omnidirectional, omnidirectional_certificate
from .preimage import Preimage, PreimageCertificate, layer_preimage, preimage

__all__ = [
    "OmniCertificate",
    "Preimage",
    "PreimageCertificate",
    "is_omnidirectional",
    "layer_preimage",
    "omnidirectional_certificate",
    "preimage",
]
__version__ = "0.1.0"
