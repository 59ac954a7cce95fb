"""examples/python/train_sat.py runs end to end (at a tiny size; the full-size figures
are in docs/RESULTS.md)."""
import json
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "python" / "train_sat.py"


def test_the_example_trains_both_methods_and_writes_its_table(tmp_path):
    out = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), "--epochs", "1", "--train-size", "128", "--test-size", "64",
         "--eval-samples", "32", "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr
    results = json.loads(out.read_text())["results"]
    assert [r["method"] for r in results] == ["standard", "sat"]
    for r in results:
        assert 0 <= r["clean"] <= 1 and set(r["pgd"]) == {"2/255", "4/255", "8/255"}
    assert "| sat |" in done.stdout
