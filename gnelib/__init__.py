"""gnelib: the library behind gnebook, a book on gradient norm equality in deep networks.

Every function a chapter calls is importable from the top level; its docstring names the
equation or theorem it implements.
"""
from .data import DATASETS, Dataset, cifar10, gaussian_mixture, load_dataset, mnist1d
from .errors import check_choice, check_positive, check_positive_int
from .inits import INITS, init_weight_
from .models import ACTIVATIONS, MLP, Block, make_activation
from .plotting import COLORS, subplots, use_style
from .probes import JacobianMoments, gradient_norms, jacobian_moments
from .profiles import PROFILES, SIZES, check_profile, default_profile, sizes
from .reporting import (Chapter, atomic_write_json, current_chapter, data_dir, record,
                        results_path, setup_chapter)
from .repro import DEVICES, get_device, seed_everything
from .training import History, evaluate, train

__version__ = "0.1.0"
from .probes import activation_gradient_norms, block_moments
from .theory import relu_block_phi, relu_block_relative_variance, relu_block_scale
from . import moments
from .moments import Moments, selu_coefficients
from .layers import (CenteredConv1d, CenteredConv2d, L1MomentNorm, SecondMomentNorm,
                     SWSConv1d, SWSConv2d, SWSLinear, centered_weight, second_moment_norm,
                     standardized_weight)
from .bdi_inits import CONV_INITS, delta_orthogonal_, fixup_scale, haar_orthogonal_, init_model_
from .pws import (CentredConv1d, CentredConv2d, PWSConv1d, PWSConv2d, WSConv1d, WSConv2d,
                  centred_kernel, pws_kernel, wn_conv, wn_linear, ws_kernel)
from .pws_models import NORMS, NormMLP, PlainConvNet, PWSResNet, teacher_data
from . import variance
from .variance import (average_weight_gradient, filter_sums, forward_records, gradient_records,
                       weight_records)
from .isometry import (gram_eigenvalues, haar_orthogonal, isometry, isometry_gap, isometry_gaps,
                       min_eigenvalue_ratios)
from .weingarten import coset_type, haar_moment, pair_partitions, weingarten_orthogonal
from .bn_mlp import BNMLP, PaperBatchNorm, layer_gains, paper_batch_norm, torch_batch_norm
from .bn_gradients import (bn_chain_gaps, bn_forward, bn_inputs, layer_gradient_profile,
                           layer_log_grad_norms, log_grad_norm_vs_depth,
                           log_grad_norms_at_depths, stack_weights)
from .convnets import ResNet, SerialNet, activation_gain, make_conv_activation, resnet56
from .fast import CompiledSecondMomentNorm, compiled_second_moment_norm
from . import experiments, probe_model, store
from .probe_model import BlockProbe, ModelProbe
from .store import Store, StoreWarning
from . import bdi_experiments
from . import bn_experiments
from . import pws_experiments
