"""The tour runs end to end on embedded data and writes its plot."""

from __future__ import annotations

import numpy as np

from gpkern.__main__ import main


def test_tour_writes_table_and_plot(tmp_path, capsys, monkeypatch):
    # The sections are exercised by CI's `make demo` step; here the regressors only.
    monkeypatch.setattr("gpkern.tour.SECTIONS", [])
    out = tmp_path / "tour.png"
    assert main(["tour", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "RMSE" in printed and "plot written to" in printed
    assert out.stat().st_size > 10_000
    # MASS mcycle: a GP's held-out RMSE sits well below the targets' spread (~48 g).
    rmse = [float(line.split()[-2]) for line in printed.splitlines() if "RMSE" in line and "GP (ARD" in line]
    assert rmse and np.all(np.array(rmse) < 30)


def test_help_documents_tour(capsys):
    import pytest

    with pytest.raises(SystemExit) as exc:
        main(["tour", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--out" in out and "--quick" in out and "mcycle" in out
