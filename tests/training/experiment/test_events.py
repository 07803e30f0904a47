"""training.events: the `@@ {json}` progress lines between the recipe and the local backend."""

from training.experiment.events import EVENT_PREFIX, emit, parse_event


def test_an_emitted_event_parses_back(capsys, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    emit("log", step=3, max_steps=10, train_loss=2.5)
    line = capsys.readouterr().out
    assert line.startswith(EVENT_PREFIX) and line.endswith("\n")
    assert parse_event(line) == {"event": "log", "step": 3, "max_steps": 10, "train_loss": 2.5}


def test_only_rank_0_emits(capsys, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    emit("done", eval_loss=1.0)
    assert capsys.readouterr().out == ""


def test_other_lines_are_not_events():
    assert parse_event("step 3/10  loss 2.5000\n") is None
    assert parse_event("@@ {not json\n") is None
    assert parse_event('@@ ["a list"]\n') is None
    assert parse_event('x@@ {"event": "log"}') is None
