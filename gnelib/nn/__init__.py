"""Torch modules: initialisation, activations, normalisations (BN, the paper's BN, SMN,
L1-MN), standardised convolutions (centred, WS, sWS, PWS, WN), MLPs and conv nets. Imports
only :mod:`gnelib.base` and :mod:`gnelib.theory`."""
