"""examples/tune_digits.py runs end to end on a tiny budget (subprocess)."""
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")
pytest.importorskip("jinja2")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG = b"\x89PNG\r\n\x1a\n"


def test_tune_digits_tiny_budget(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "tune_digits.py"), "--trials", "4",
         "--steps", "120", "--eval-every", "20", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout
    # the table of trials: a header and one row per trial, one of them marked best
    assert "best val err" in text and "best step" in text
    rows = [l for l in text.splitlines() if l.strip() and l.split()[0] in {"0", "1", "2", "3"}]
    assert len(rows) == 4
    assert sum("<- best" in r for r in rows) == 1
    assert "best configuration: trial" in text
    # the document's checks, read back from results.jsonl by fastopt.study
    assert "study report (fastopt.study):" in text
    findings = json.loads((out / "report" / "findings.json").read_text())
    assert findings["n_trials"] == 4 and findings["objective"] == "val_error"
    assert set(findings["boundary"]) == {"learning_rate", "one_minus_beta1", "weight_decay"}
    assert findings["best"]["trial"] in range(4) and findings["grad_norm"] is not None
    for sentence in findings["findings"]:
        assert sentence in text
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted({r["trial"] for r in records}) == [0, 1, 2, 3]
    assert len(records) == 4 * 6  # every 20 steps of 120, four workers' trials in one file
    page = (out / "report" / "index.html").read_text()
    assert page.count("data:image/png;base64,") >= 5
    # the too-low threshold shows the monitor's warning
    assert "deliberately too low" in text
    assert "ClippingWarning:" in text and "clipped (more than 50%)" in text
    data = (out / "grad_norms.png").read_bytes()
    assert data[:8] == PNG and len(data) > 1000
    csv = (out / "trials.csv").read_text().splitlines()
    assert csv[0].startswith("trial,learning_rate") and len(csv) == 5
