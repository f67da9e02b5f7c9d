"""The WaveNet decoder: discrete codes -> audio (stage 6 of the pipeline).

- ``config``: ``WaveNetConfig``, the architecture;
- ``model``: ``WaveNet`` (teacher-forced forward, conditioning, sampling);
- ``distribution``: the output distributions (softmax, discretized logistic mixture);
- ``conditioning``: the incremental decoder for per-sample (decoded log-mel) conditioning;
- ``modules``: mu-law companding and the gated residual layer;
- ``incremental``: the ring-buffer ``IncrementalDecoder`` and the sampler that fast generation uses;
- ``fused``: ``FusedDecoder``, the same step as one compiled (numba) call, what ``generate`` uses on CPU.
"""

from tokenlm.models.wavenet.fused import FusedDecoder, fused_available
from tokenlm.models.wavenet.incremental import GumbelSampler, IncrementalDecoder
from tokenlm.models.wavenet.config import WaveNetConfig
from tokenlm.models.wavenet.model import WaveNet
from tokenlm.models.wavenet.modules import ResidualLayer, de_emphasis, mu_law_decode, mu_law_encode, pre_emphasis

__all__ = [
    "mu_law_encode",
    "mu_law_decode",
    "pre_emphasis",
    "de_emphasis",
    "ResidualLayer",
    "WaveNetConfig",
    "WaveNet",
    "IncrementalDecoder",
    "FusedDecoder",
    "fused_available",
    "GumbelSampler",
]
