"""Neural-network modules: layers as pytrees, reparameterisations, save/load.

A model is a frozen dataclass of arrays and submodules (a :class:`Module`); calling it
changes nothing, gradients come back shaped like it, and :func:`save` writes it as
named arrays.
"""

from ._conv import conv2d as conv2d
from ._conv import conv2d_input_grad as conv2d_input_grad
from ._conv import conv2d_weight_grad as conv2d_weight_grad
from ._deq import DEQ as DEQ
from ._deq import materialize as materialize
from ._dropout import VariationalDropout as VariationalDropout
from ._dropout import dropout_mask as dropout_mask
from ._functional import GELU as GELU
from ._functional import ReLU as ReLU
from ._functional import Sigmoid as Sigmoid
from ._functional import Tanh as Tanh
from ._functional import accuracy as accuracy
from ._functional import cross_entropy as cross_entropy
from ._functional import gelu as gelu
from ._functional import log_softmax as log_softmax
from ._functional import logsumexp as logsumexp
from ._functional import relu as relu
from ._functional import sigmoid as sigmoid
from ._functional import softmax as softmax
from ._functional import tanh as tanh
from ._init import generator as generator
from ._init import normal_init as normal_init
from ._init import uniform_init as uniform_init
from ._init import zeros_init as zeros_init
from ._layers import Conv2d as Conv2d
from ._layers import GroupNorm as GroupNorm
from ._layers import LayerNorm as LayerNorm
from ._layers import Linear as Linear
from ._models import ConvCell as ConvCell
from ._models import DEQClassifier as DEQClassifier
from ._models import MLPCell as MLPCell
from ._models import ReluCell as ReluCell
from ._models import TanhCell as TanhCell
from ._models import conv_deq as conv_deq
from ._models import mlp_deq as mlp_deq
from ._module import Module as Module
from ._module import Sequential as Sequential
from ._regularization import jacobian_regularization as jacobian_regularization
from ._reparam import MonotoneLinear as MonotoneLinear
from ._reparam import SpectralNorm as SpectralNorm
from ._reparam import WeightNorm as WeightNorm
from ._reparam import spectral_norm as spectral_norm
from ._reparam import update_buffers as update_buffers
from ._reparam import weight_norm as weight_norm
from ._sequence import CausalSelfAttention as CausalSelfAttention
from ._sequence import Embedding as Embedding
from ._sequence import SequenceLM as SequenceLM
from ._sequence import TransformerCell as TransformerCell
from ._sequence import Unrolled as Unrolled
from ._sequence import causal_mask as causal_mask
from ._sequence import positional_encoding as positional_encoding
from ._sequence import transformer_deq as transformer_deq
from ._sequence import transformer_stack as transformer_stack
from ._serialize import load as load
from ._serialize import load_metadata as load_metadata
from ._serialize import named_leaves as named_leaves
from ._serialize import save as save

__all__ = [
    "DEQ",
    "GELU",
    "CausalSelfAttention",
    "Conv2d",
    "ConvCell",
    "DEQClassifier",
    "Embedding",
    "GroupNorm",
    "LayerNorm",
    "Linear",
    "MLPCell",
    "Module",
    "MonotoneLinear",
    "ReLU",
    "ReluCell",
    "SequenceLM",
    "Sequential",
    "Sigmoid",
    "SpectralNorm",
    "Tanh",
    "TanhCell",
    "TransformerCell",
    "Unrolled",
    "VariationalDropout",
    "WeightNorm",
    "accuracy",
    "causal_mask",
    "conv2d",
    "conv2d_input_grad",
    "conv2d_weight_grad",
    "conv_deq",
    "cross_entropy",
    "dropout_mask",
    "gelu",
    "generator",
    "jacobian_regularization",
    "load",
    "load_metadata",
    "log_softmax",
    "logsumexp",
    "materialize",
    "mlp_deq",
    "named_leaves",
    "normal_init",
    "positional_encoding",
    "relu",
    "save",
    "sigmoid",
    "softmax",
    "spectral_norm",
    "tanh",
    "transformer_deq",
    "transformer_stack",
    "uniform_init",
    "update_buffers",
    "weight_norm",
    "zeros_init",
]
