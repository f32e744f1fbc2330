"""Fast paths of the training core (fused CPU kernels).  The reference algorithms live in
:mod:`xmcviz.core.models` and :mod:`xmcviz.core.optim`; these are tested equal to them."""
