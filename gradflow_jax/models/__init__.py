"""Producers: the built-in MLP and RNN, Flax linen and NNX models, their activations, initializers and losses."""
