"""The dynamics core: the model contract, state layout, teaching signals, transfer
functions, integration, equilibria, Jacobians and spectra, continuation."""
