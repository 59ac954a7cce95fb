"""sat.evaluate: the CLI's figures on the caller's model and tensors."""
import pytest
import torch

import sat


def test_figures_are_those_of_the_model(model, test_set):
    x, y = test_set
    result = sat.evaluate(model, x, y, attacks=["fgsm"], eps=[8 / 255], batch_size=32)
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean().item()
    assert abs(result["clean_accuracy"] - clean) < 1e-9
    (fgsm,) = result["robust_accuracy"]
    adv = sat.Attack("fgsm", model, eps=8 / 255)(x, y)
    with torch.no_grad():
        robust = (model(adv).argmax(1) == y).float().mean().item()
    assert fgsm["attack"] == "fgsm" and abs(fgsm["epsilon"] - 8 / 255) < 1e-12
    assert abs(fgsm["accuracy"] - robust) < 1e-9
    assert fgsm["samples"] == len(x)
    assert len(fgsm["confusion"]) == 3 and sum(map(sum, fgsm["confusion"])) == len(x)
    # Fooled images: right before, wrong after; FGSM moves every pixel by ε.
    assert fgsm["fooled"] == round((clean - robust) * len(x))
    assert fgsm["misclassified"] == round((1 - robust) * len(x))
    assert abs(fgsm["median_linf"] - 8 / 255) < 1e-6


def test_several_attacks_and_budgets_with_their_keys(model, test_set):
    x, y = test_set
    result = sat.evaluate(model, x, y, attacks=["fgsm", "pgd"], eps=[2 / 255, 8 / 255],
                          components={"pgd": {"steps": 3}}, class_names=["a", "b", "c"])
    rows = [(r["attack"], round(r["epsilon"] * 255)) for r in result["robust_accuracy"]]
    assert rows == [("fgsm", 2), ("fgsm", 8), ("pgd", 2), ("pgd", 8)]
    pgd = result["robust_accuracy"][3]
    assert pgd["steps"] == 3
    assert result["class_names"] == ["a", "b", "c"]
    assert pgd["accuracy"] <= result["robust_accuracy"][2]["accuracy"]


def test_errors_name_what_is_wrong(model, test_set):
    x, y = test_set
    with pytest.raises(ValueError, match="pgdd"):
        sat.evaluate(model, x, y, attacks=["fgsm"], components={"pgdd": {"steps": 1}})

    def broken(images):
        raise RuntimeError("no forward today")

    with pytest.raises(RuntimeError, match="no forward today"):
        sat.evaluate(broken, x, y, attacks=["fgsm"])

    # Counts out of range are refused by name, not as an anonymous OverflowError.
    for key, value in [("max_samples", -1), ("batch_size", 0), ("seed", -3), ("batch_size", 2.5)]:
        with pytest.raises(ValueError, match=f"{key} must be an integer of at least"):
            sat.evaluate(model, x, y, attacks=["fgsm"], **{key: value})


def test_a_set_holding_some_classes_only_is_evaluated_on_the_models_classes(model, test_set):
    x, y = test_set
    keep = y == 0
    result = sat.evaluate(model, x[keep], y[keep], attacks=["fgsm"])
    assert result["class_names"] == ["0", "1", "2"]
    assert len(result["robust_accuracy"][0]["confusion"]) == 3
