"""Closed-form theory, numpy/scipy in float64 only (no torch): the moment calculus and
component library (block dynamical isometry), ReLU-block constants, the variance/shift model
(PWS), the orthogonal Weingarten function and Yang et al.'s rate (batch normalization)."""
