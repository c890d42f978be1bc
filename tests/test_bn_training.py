"""The chapter's batched training of tanh / sin BN MLPs (Fig. 4 and Fig. 6 / F1-F2
counterparts): the stacked networks equal gnelib's BNMLP with nn.BatchNorm1d, one SGD step equals
torch's, and the records have the documented shapes."""
import numpy as np
import pytest
import torch

from gnelib.data import gaussian_mixture
from gnelib.nn.batchnorm import BNMLP, layer_gains
from gnelib.runs import bn as bx


def _pair(act="tanh", k=0.4, depth=4, width=6, in_dim=5, out=3, seed=3):
    g = torch.Generator().manual_seed(seed)
    net = bx._StackedBNMLP(in_dim, width, depth, out, [act], [layer_gains(depth, k)], [g], "cpu")
    ref = BNMLP(in_dim, width, depth, out, init="orthogonal", norm="torch", activation=act, bias=True,
                gain_exponent=k)
    with torch.no_grad():
        for ell, block in enumerate(ref.blocks):
            block.linear.weight.copy_(net.W[ell][0])
        ref.head.weight.copy_(net.H[0])
    return net, ref


@pytest.mark.parametrize("act", ["tanh", "sin"])
def test_stacked_network_equals_bnmlp_and_one_sgd_step(act):
    net, ref = _pair(act)
    x = torch.randn(8, 5, generator=torch.Generator().manual_seed(1))
    y = torch.randint(3, (8,), generator=torch.Generator().manual_seed(2))
    ref.train()
    out = net.forward(x[None], "batch", update=True)[0]
    logits_ref = ref(x)  # one call in train mode: updates the running statistics once
    loss_ref = torch.nn.functional.cross_entropy(logits_ref, y)
    torch.testing.assert_close(out, logits_ref.detach(), rtol=1e-5, atol=1e-6)
    # running statistics after one batch: torch keeps momentum 0.1 and the unbiased variance
    for ell, block in enumerate(ref.blocks):
        torch.testing.assert_close(net.rm[ell][0, 0], block.norm.running_mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(net.rv[ell][0, 0], block.norm.running_var, rtol=1e-5, atol=1e-6)
    ref.eval()
    torch.testing.assert_close(net.forward(x[None], "running")[0], ref(x).detach(), rtol=1e-5, atol=1e-6)
    # one SGD step on the same batch
    ref.train()
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    opt.zero_grad()
    loss_ref.backward()
    opt.step()
    loss = bx._ce_per_run(net.forward(x[None], "batch"), y[None]).sum()
    grads = torch.autograd.grad(loss, net.params())
    with torch.no_grad():
        for p, g in zip(net.params(), grads):
            p.sub_(0.1 * g)
    for ell, block in enumerate(ref.blocks):
        torch.testing.assert_close(net.W[ell][0], block.linear.weight.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(net.gamma[ell][0, 0], block.norm.weight.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(net.H[0], ref.head.weight.detach(), rtol=1e-5, atol=1e-6)


def test_train_bn_activations_records():
    data = gaussian_mixture(n_train=96, n_test=40, dim=5, classes=3,
                            generator=torch.Generator().manual_seed(0))
    r = bx.train_bn_activations(data, ("tanh", "sin"), 0.4, depth=4, width=8, epochs=2, lr=0.05,
                                seeds=3, seed=11)
    assert [(a["activation"], a["gain_exponent"]) for a in r["arms"]] == [
        ("tanh", 0.0), ("tanh", 0.4), ("sin", 0.0), ("sin", 0.4)]
    assert r["epochs"] == [0, 1, 2]
    assert r["test_acc"].shape == r["train_acc"].shape == r["test_acc_batch"].shape == (4, 3, 3)
    assert r["grad_norms"].shape == (4, 3, 3, 4) and r["weight_gaps"].shape == (4, 3, 3, 3)
    assert np.all(np.isnan(r["train_acc"][..., 0])) and np.all(np.isfinite(r["train_acc"][..., 1:]))
    # orthogonal at initialisation, moved after training
    assert np.max(r["weight_gaps"][:, :, 0]) < 1e-10 and np.min(r["weight_gaps"][:, :, -1]) > 0
    # arms of one seed share their initial weights: the unshaped tanh and sin arms differ only
    # in the activation, so their first-layer gradients at initialisation differ, while two
    # runs of one arm with different seeds differ too (independent draws)
    assert not np.allclose(r["grad_norms"][0, 0, 0], r["grad_norms"][0, 1, 0])
    assert not r["diverged"].any()
    again = bx.train_bn_activations(data, ("tanh", "sin"), 0.4, depth=4, width=8, epochs=2, lr=0.05,
                                    seeds=3, seed=11)
    np.testing.assert_array_equal(again["test_acc"], r["test_acc"])
    stop = bx.train_bn_activations(data, ("tanh",), 0.4, depth=3, width=8, epochs=5, lr=0.05,
                                   seeds=2, seed=1, max_steps=2)
    assert stop["epochs"] == [0, 1]
    with pytest.raises(ValueError, match="tanh or sin"):
        bx.train_bn_activations(data, ("relu",), 0.4, depth=3, width=8, epochs=1, lr=0.05, seeds=2, seed=1)


def test_registered_bn_train_activations():
    from gnelib.runs import registry
    full = registry.make_config("bn_train_activations", "full")
    assert (full.train_data, full.depth, full.width, full.lr) == ("cifar10", 1000, 100, 0.001)
    book = registry.make_config("bn_train_activations", "book")
    assert book.seeds >= 3 and book.train_data == "mnist1d"
    with pytest.raises(ValueError, match="activations"):
        bx.BNTrainActivationsConfig(activations=("relu",))
