import csv

import pytest

from tests.models import tiny_jepa, tiny_jepa_train
from worldmodel.jepa import PretrainObjective
from worldmodel.training import Trainer


def test_a_tiny_run_writes_tensorboard_events_beside_its_csv_log(tiny_dataset, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny_jepa_train(steps=4, log_every=2, logger="tensorboard")
    Trainer(PretrainObjective(tiny_jepa(), cfg, tiny_dataset.split("train")), cfg, tmp_path / "run").run()
    rows = list(csv.DictReader(open(tmp_path / "run" / "log.csv")))
    assert [r["step"] for r in rows] == ["2", "4"]  # the CSV log is written either way
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard")).Reload()
    assert "loss" in events.Tags()["scalars"]
    logged = events.Scalars("loss")
    assert [e.step for e in logged] == [2, 4]
    assert [e.value for e in logged] == pytest.approx([float(r["loss"]) for r in rows], rel=1e-6)


def test_an_unknown_logger_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match=r"logger must be one of \('csv', 'tensorboard'\), got 'wandb'"):
        tiny_jepa_train(logger="wandb")
