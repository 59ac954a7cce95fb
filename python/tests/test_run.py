"""sat.run: `sat-host run` in this process."""
import json

import sat

TINY = {
    "data.train_size": 64,
    "data.test_size": 32,
    "train.epochs": 1,
    "train.batch_size": 32,
    "model.width": 4,
    "eval.epsilons": ["4/255"],
    "components.pgd.steps": 1,
}


def test_a_run_trains_evaluates_and_returns_its_metrics(tmp_path):
    config = tmp_path / "tiny.toml"
    config.write_text(f'name = "py-tiny"\nruns_dir = "{tmp_path / "runs"}"\n')
    metrics = sat.run(config, dict(TINY, **{"train.attack": "fgsm"}))
    assert metrics["status"] == "completed"
    run_dir = metrics["run_dir"]
    assert run_dir.startswith(str(tmp_path / "runs"))
    on_disk = json.loads((tmp_path / "runs" / run_dir.split("/")[-1] / "metrics.json").read_text())
    assert on_disk["clean_accuracy"] == metrics["clean_accuracy"]
    assert 0 <= metrics["clean_accuracy"] <= 1
    assert metrics["robust_accuracy"], "the run evaluated its attacks"


def test_a_bad_key_is_an_error_naming_it(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('name = "py-bad"\n[train]\nepochz = 3\n')
    try:
        sat.run(config)
    except sat.SatError as e:
        assert "epochz" in str(e) and "bad.toml" in str(e)
    else:
        raise AssertionError("an unknown key was accepted")
