"""Live progress of a pair and its closing summary (rich).

On a terminal: one bar per arm with step, losses and throughput. Elsewhere (CI, a log file): a plain
line per logged step, so the output stays readable when nobody is watching it live.
"""

from __future__ import annotations

import threading
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text


def _fmt(value, spec=".3f") -> str:
    return "-" if value is None else format(value, spec)


class PairProgress:
    def __init__(self, console: Console, arms: list[str]):
        self.console = console
        self.live = console.is_terminal
        self.lock = threading.Lock()
        self.progress = Progress(
            TextColumn("[bold]{task.description:<10}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
            console=console, disable=not self.live,
        )
        self.tasks = {a: self.progress.add_task(a, total=None, info="starting") for a in arms}

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)

    def update(self, state, event: dict) -> None:
        kind = event.get("event")
        last = state.last
        info = (f"loss {_fmt(last.get('train_loss'))}  eval {_fmt(last.get('eval_loss'))}  "
                f"{_fmt(last.get('tokens_per_second'), ',.0f')} tok/s")
        if kind == "done" and state.status == "skipped":  # finished by an earlier run
            steps = event.get("global_step")
            info = (f"finished earlier ({steps} steps), skipped  eval "
                    f"{_fmt(event.get('eval_loss'))}")
        elif kind == "done":
            info = f"done  eval {_fmt(event.get('eval_loss'))}"
        elif kind == "exit" and state.status not in ("finished", "skipped"):
            info = f"{state.status} ({getattr(state, 'how', None) or event.get('returncode')})"
        with self.lock:
            self.progress.update(self.tasks[state.arm], total=state.max_steps,
                                 completed=state.step, info=info)
            quiet_exit = kind == "exit" and state.status in ("finished", "skipped")
            if not self.live and not quiet_exit and kind in (
                    "start", "log", "eval", "done", "preempted", "exit"):
                where = "" if state.status == "skipped" else (
                    f"step {state.step}/{state.max_steps or '?'}  ")
                self.console.print(f"{state.arm:<10} {where}{info}", highlight=False)

    def summary(self, states: dict, pair_dir: Path, pair_id: str | None = None) -> None:
        # a replicate's table is titled by its own pair id (what compare and MLflow name it)
        table = Table(title=Text(f"pair {pair_id or pair_dir.name}"), title_justify="left")
        # "process": the arm's process from start to end (imports, model, data included); the
        # verdict's "run time" is its MLflow run's, the training alone
        for col in ("arm", "status", "steps", "train loss", "eval loss", "ppl", "tokens/s",
                    "process"):
            table.add_column(col, justify="left" if col in ("arm", "status") else "right")
        for s in states.values():
            m = s.metrics or {}
            table.add_row(s.arm, s.status, str(m.get("global_step", s.step)),
                          _fmt(m.get("train_loss", s.last.get("train_loss"))),
                          _fmt(m.get("eval_loss", s.last.get("eval_loss"))),
                          _fmt(m.get("perplexity"), ".2f"),
                          _fmt(m.get("tokens_per_second", s.last.get("tokens_per_second")), ",.0f"),
                          "-" if s.seconds is None else f"{s.seconds:.0f} s")
        self.console.print(table)
        for s in states.values():
            if s.status in ("failed", "interrupted"):
                how = f" ({s.how})" if getattr(s, "how", None) else ""
                self.console.print(f"{s.arm}: {s.status}{how}, see {s.folder / 'train.log'}",
                                   highlight=False, markup=False)
                if s.status == "failed" and getattr(s, "tail", None):
                    self.console.print(f"last lines of {s.arm}'s output:", highlight=False)
                    for line in s.tail:
                        self.console.print(f"  {s.arm} | {line}", highlight=False, markup=False)
        self.console.print(f"results: {pair_dir}")
