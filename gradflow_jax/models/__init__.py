"""``gf.models``: producers of probed models (the built-in MLP and RNN, Flax
linen and NNX) and what they are built from: activations, initializers,
losses."""

from gradflow_jax.models._activations import ACTIVATIONS, get_activation
from gradflow_jax.models._config import MLPConfig
from gradflow_jax.models._flax import as_probed, from_linen, from_nnx
from gradflow_jax.models._initializers import initializer, INITIALIZERS, recommended_init
from gradflow_jax.models._losses import loss_value
from gradflow_jax.models._mlp import init_mlp, load_npz, mlp_forward, mlp_model
from gradflow_jax.models._rnn import init_rnn, rnn_model, RNNConfig

__all__ = ("ACTIVATIONS", "as_probed", "from_linen", "from_nnx", "get_activation", "init_mlp",
           "init_rnn", "initializer", "INITIALIZERS", "load_npz", "loss_value", "MLPConfig",
           "mlp_forward", "mlp_model", "recommended_init", "rnn_model", "RNNConfig")
