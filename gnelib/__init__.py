"""gnelib: the library behind gnebook, a book on gradient norm equality in deep networks.

Every function a chapter calls is importable from the top level; its docstring names the
equation or theorem it implements.
"""
from gnelib.data import DATASETS, Dataset, cifar10, gaussian_mixture, load_dataset, mnist1d
from gnelib.base.errors import check_choice, check_positive, check_positive_int
from gnelib.nn.init import INITS, init_weight_
from gnelib.nn.mlp import ACTIVATIONS, MLP, Block, make_activation
from gnelib.base.plotting import COLORS, subplots, use_style
from gnelib.probes.jacobian import JacobianMoments, gradient_norms, jacobian_moments
from gnelib.base.profiles import PROFILES, SIZES, check_profile, default_profile, sizes
from gnelib.book.chapter import Chapter, current_chapter, record, setup_chapter
from gnelib.book.checks import check, checks_table
from gnelib.base.io import atomic_write_json, data_dir, results_path
from gnelib.base.device import DEVICES, get_device, seed_everything
from gnelib.training import History, evaluate, train

from .base import __version__
from gnelib.probes.jacobian import activation_gradient_norms, block_moments
from gnelib.theory.relu import relu_block_phi, relu_block_relative_variance, relu_block_scale
from gnelib.theory import moments
from gnelib.theory.moments import Moments, selu_coefficients
from gnelib.nn.convs import SWSConv1d, SWSConv2d, SWSLinear, standardized_weight
from gnelib.nn.norms import L1MomentNorm, SecondMomentNorm, second_moment_norm
from gnelib.nn.init import CONV_INITS, delta_orthogonal_, fixup_scale, haar_orthogonal_, init_model_
from gnelib.nn.convs import (CentredConv1d, CentredConv2d, PWSConv1d, PWSConv2d, WSConv1d, WSConv2d,
                  centred_kernel, pws_kernel, wn_conv, wn_linear, ws_kernel)
from gnelib.nn.normnets import NORMS, NormMLP, PlainConvNet, PWSResNet
from gnelib.data import teacher_data
from gnelib.theory import variance
from gnelib.probes.variance import average_weight_gradient, filter_sums, forward_records, gradient_records, weight_records
from gnelib.probes.isometry import (gram_eigenvalues, haar_orthogonal, isometry, isometry_gap, isometry_gaps,
                       min_eigenvalue_ratios)
from gnelib.theory.weingarten import coset_type, haar_moment, pair_partitions, weingarten_orthogonal
from gnelib.nn.batchnorm import BNMLP, PaperBatchNorm, layer_gains, paper_batch_norm, torch_batch_norm
from gnelib.probes.bn_chain import (bn_chain_gaps, bn_forward, bn_inputs, layer_gradient_profile,
                           layer_log_grad_norms, log_grad_norm_vs_depth,
                           log_grad_norms_at_depths, stack_weights)
from gnelib.nn.convnets import ResNet, SerialNet, activation_gain, make_conv_activation, resnet56
from gnelib.nn.fast import CompiledSecondMomentNorm, compiled_second_moment_norm
from gnelib import runs
from gnelib.runs import registry as experiments
from gnelib.probes import model as probe_model
from gnelib.runs import store
from gnelib.probes.model import BlockProbe, ModelProbe
from gnelib.runs.store import Store, StoreWarning
from gnelib.runs import bdi as bdi_experiments
from gnelib.runs import bn as bn_experiments
from gnelib.runs import pws as pws_experiments
