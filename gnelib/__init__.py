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
