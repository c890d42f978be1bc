"""Measurements on torch modules: Jacobian moments (Hutchinson), the model probe, gradient
norms, isometry gaps of batch-normalised chains, variance-transmission records. Imports only
the layers below (base, theory, nn)."""
