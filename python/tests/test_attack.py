"""sat.Attack: torchattacks' shape, its results, its errors, and the model called back."""
import signal

import pytest
import torch
import torch.nn as nn

import sat



def reference():
    try:
        import torchattacks
    except ImportError as e:  # pragma: no cover - setup problem
        pytest.fail(f"torchattacks 3.5.1 is not installed (run scripts/setup-libtorch): {e}")
    return torchattacks


def robust_accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def test_fgsm_is_torchattacks_fgsm(model, test_set):
    x, y = test_set
    ours = sat.Attack("fgsm", model, eps=8 / 255)(x, y)
    theirs = reference().FGSM(model, eps=8 / 255)(x, y)
    assert (ours - theirs).abs().max().item() < 1e-6
    assert robust_accuracy(model, ours, y) == robust_accuracy(model, theirs, y)
    assert robust_accuracy(model, ours, y) < robust_accuracy(model, x, y)


def test_pgd_is_torchattacks_pgd(model, test_set):
    x, y = test_set
    ours = sat.Attack("pgd", model, eps=8 / 255, alpha=2 / 255, steps=10, random_start=False)(x, y)
    theirs = reference().PGD(model, eps=8 / 255, alpha=2 / 255, steps=10, random_start=False)(x, y)
    assert (ours - theirs).abs().max().item() < 1e-5
    assert robust_accuracy(model, ours, y) == robust_accuracy(model, theirs, y)


def test_apgd_ce_is_torchattacks_apgd(model, test_set):
    x, y = test_set
    # Both draw their random start from torch's default generator, seeded alike.
    torch.manual_seed(0)
    ours = sat.Attack("apgd-ce", model, eps=8 / 255, steps=10)(x, y)
    theirs = reference().APGD(model, norm="Linf", eps=8 / 255, steps=10, n_restarts=1, loss="ce", seed=0)(x, y)
    assert robust_accuracy(model, ours, y) == robust_accuracy(model, theirs, y)
    assert robust_accuracy(model, ours, y) < robust_accuracy(model, x, y)


def test_an_unknown_key_lists_the_accepted_ones(model):
    with pytest.raises(TypeError, match=r"no key `epsilonn` \(did you mean `epsilon`\?\); it accepts: .*steps"):
        sat.Attack("pgd", model, epsilonn=0.1)
    with pytest.raises(ValueError, match="no attack component `pgdd`; did you mean `pgd`.*available attack components: .*fgsm"):
        sat.Attack("pgdd", model)
    with pytest.raises(sat.SatError, match=r"steps = 100001 is outside \[0, 10000\]"):
        sat.Attack("pgd", model, steps=100001)


def test_a_python_exception_in_the_model_comes_back_as_itself(model, test_set):
    x, y = test_set

    class Broken(nn.Module):
        def forward(self, x):
            raise ZeroDivisionError("the model broke")

    with pytest.raises(ZeroDivisionError, match="the model broke"):
        sat.Attack("pgd", Broken(), steps=3)(x, y)


def test_ctrl_c_interrupts_a_long_attack(model, test_set):
    x, y = test_set
    calls = []

    def interrupted_model(images):
        calls.append(1)
        if len(calls) == 5:
            signal.raise_signal(signal.SIGINT)
        return model(images)

    attack = sat.Attack("pgd", interrupted_model, steps=10000)
    with pytest.raises(KeyboardInterrupt):
        attack(x, y)
    assert len(calls) <= 6, f"{len(calls)} model calls after Ctrl-C"


def test_the_model_keeps_its_mode_and_gets_no_parameter_gradients(model, test_set):
    x, y = test_set
    model.train()
    sat.Attack("pgd", model, steps=2)(x, y)
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    model.eval()


def test_a_torchscript_model_gives_the_same_examples(model, test_set):
    x, y = test_set
    scripted = torch.jit.trace(model, x[:2])
    ours = sat.Attack("fgsm", scripted, eps=8 / 255)(x, y)
    plain = sat.Attack("fgsm", model, eps=8 / 255)(x, y)
    assert (ours - plain).abs().max().item() < 1e-6


def test_l2_budgets_hold(model, test_set):
    x, y = test_set
    attack = sat.Attack("pgd", model, norm="l2", eps=0.5, alpha=0.2, steps=5)
    adv = attack(x, y)
    assert attack.norm == "l2" and attack.eps == 0.5 and attack.steps == 5
    norms = (adv - x).flatten(1).norm(dim=1)
    assert norms.max().item() <= 0.5 + 1e-5
    assert adv.min().item() >= 0 and adv.max().item() <= 1


def test_wrong_inputs_are_refused_by_name(model, test_set):
    x, y = test_set
    attack = sat.Attack("fgsm", model)
    with pytest.raises(ValueError, match="labels: expected an int64 tensor"):
        attack(x, y.int())
    with pytest.raises(TypeError, match="images: expected a torch.Tensor"):
        attack(x.numpy(), y)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_tensors_stay_on_the_gpu(model, test_set):
    x, y = test_set
    gpu = model.cuda()
    try:
        adv = sat.Attack("pgd", gpu, steps=3)(x.cuda(), y.cuda())
        assert adv.is_cuda
    finally:
        model.cpu()


def test_plugins_come_from_the_package_and_sat_plugin_path(monkeypatch, tmp_path):
    listed = sat.components()
    names = {(c["kind"], c["name"]) for c in listed}
    assert {("attack", "pgd"), ("attack", "sat"), ("saliency", "masks"), ("objective", "trades")} <= names
    assert all("/sat/plugins/" in c["library"] for c in listed)
    # A path in SAT_PLUGIN_PATH that does not exist is an error, as in sat-host.
    monkeypatch.setenv("SAT_PLUGIN_PATH", str(tmp_path / "missing"))
    with pytest.raises(sat.SatError, match="missing"):
        sat.components()


def third_party_plugin():
    """The example plugin crate (examples/centre-prior), built by scripts/test."""
    from pathlib import Path

    library = Path(__file__).resolve().parents[2] / "target" / "debug" / "libcentre_prior.so"
    if not library.exists():
        pytest.fail(f"{library} is not built (scripts/test builds examples/centre-prior)")
    return library


def test_a_third_party_plugin_takes_its_own_keys(test_set):
    x, y = test_set
    library = third_party_plugin()
    maps = sat.Saliency("centre-prior", plugin_dirs=[library], sigma=0.1)(x, y)
    assert maps.shape == (len(x), 1, 16, 16)
    assert maps[:, :, 8, 8].min().item() > maps[:, :, 0, 0].max().item()
    with pytest.raises(TypeError, match="saliency source `centre-prior` has no key `sigmaa`.*accepts: sigma"):
        sat.Saliency("centre-prior", plugin_dirs=[library], sigmaa=0.1)


def test_sat_plugin_path_is_honoured(monkeypatch):
    monkeypatch.setenv("SAT_PLUGIN_PATH", str(third_party_plugin()))
    assert "centre-prior" in {c["name"] for c in sat.components()}


def test_a_library_others_can_write_is_refused_as_by_sat_host(tmp_path, test_set):
    import shutil

    x, y = test_set
    exposed = tmp_path / "exposed"
    exposed.mkdir()
    copy = exposed / "libcentre_prior_copy.so"
    shutil.copy2(third_party_plugin(), copy)
    copy.chmod(0o666)
    with pytest.raises(sat.SatError, match="writable by others"):
        sat.Saliency("centre-prior", plugin_dirs=[copy])
    maps = sat.Saliency("centre-prior", plugin_dirs=[copy], allow_insecure_plugins=True)(x, y)
    assert maps.shape[0] == len(x)
