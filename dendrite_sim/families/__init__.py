"""Shared parts of model families (engine parts a model file builds on; no concrete
model): the mixing networks' pathways and dynamics."""
