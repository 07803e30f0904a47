"""`train compare`'s reading of an MLflow store (local or a workspace's): a pair's runs by their
tags (`parent_pair_id` for all seed replicates, else `pair_id`; `arm`, `replicate`), their loss
curves and per-example losses, the recent pairs, and every failure to read as one `CompareError`
line. The report built from the runs is `compare.py`'s.
"""

from __future__ import annotations

import os
import tempfile
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

from training.errors import TrainError
from training.experiment import eval_examples
from training.experiment.config import ARMS
from training.experiment.pair import pair_id_problem
from training.experiment.tracking import redacted


class CompareError(TrainError):
    """No such pair or a missing arm (bad input, exit 2); a store that cannot be read (a request
    that failed, exit 1)."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class ArmRun:
    run_id: str
    experiment: str
    arm: str
    replicate: int
    pair_id: str
    status: str
    start: float | None  # epoch seconds
    end: float | None
    params: dict
    metrics: dict
    curves: dict = field(default_factory=dict)  # "train_loss"/"eval_loss" -> [(step, value)]
    examples: list[dict] | None = None


def iso_time(seconds: float | None) -> str | None:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds") if seconds else None


# ----------------------------------------------------------------------------- the store
def client_for(uri: str):
    # a store that is down: an answer in seconds, not after MLflow's 7 retries with backoff
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def store_error(uri: str, error: Exception, at_open: bool = False) -> CompareError:
    """A store that cannot be read, as one line (the exception's first): exit 2 when the URI
    names no store (a file store this MLflow refuses, a file that is not a database), 1 when the
    store is there but does not answer."""
    from sqlalchemy.exc import DatabaseError

    text = str(error).strip()
    first = text.splitlines()[0] if text else type(error).__name__
    if len(first) > 300:  # whole sentences: MLflow's file-store refusal runs on for a paragraph
        first = first[:first.rfind(". ", 0, 300) + 1] or first[:300]
    not_a_store = at_open or isinstance(error, DatabaseError)
    return CompareError(redacted(f"cannot read the MLflow store {uri}: {first}"),
                        exit_code=2 if not_a_store else 1)


def open_store(uri: str):
    """The store's client; CompareError when MLflow refuses the URI (a file store, a scheme it
    does not know)."""
    try:
        return client_for(uri)
    except Exception as e:  # MLflow's own refusals are not always MlflowException
        raise store_error(uri, e, at_open=True) from None


def _experiments(client) -> dict[str, str]:
    return {e.experiment_id: e.name for e in client.search_experiments()}


def list_pairs(client, limit: int = 20) -> list[dict]:
    """The most recent pairs: id, experiment name, start date, each arm's status per replicate."""
    exps = _experiments(client)
    if not exps:
        return []
    runs = client.search_runs(list(exps), "", max_results=1000,
                              order_by=["attributes.start_time DESC"])
    pairs: dict[str, dict] = {}
    for run in runs:
        tags = run.data.tags
        if "pair_id" not in tags or tags.get("arm") not in ARMS:
            continue
        pid = tags.get("parent_pair_id", tags["pair_id"])
        entry = pairs.setdefault(pid, {"pair_id": pid, "name": exps[run.info.experiment_id],
                                       "started": None, "arms": defaultdict(list)})
        entry["started"] = iso_time(run.info.start_time / 1000)  # runs come newest first
        entry["arms"][tags["arm"]].append(run.info.status)
    out = list(pairs.values())[:limit]
    for entry in out:
        entry["arms"] = {a: entry["arms"].get(a, []) for a in ARMS}
    return out


def find_runs(client, pair: str) -> dict[int, dict[str, ArmRun]]:
    """{replicate: {arm: run}} for a pair id or a parent pair id; CompareError when a pair or an
    arm is missing, naming what exists."""
    if problem := pair_id_problem(pair):  # it goes into the store's query
        raise CompareError(f"{pair!r} is not a pair id: {problem}")
    exps = _experiments(client)
    runs = []
    for key in ("parent_pair_id", "pair_id"):
        runs = list(client.search_runs(list(exps), f"tags.{key} = '{pair}'", max_results=1000,
                                       order_by=["attributes.start_time DESC"])) if exps else []
        if runs:
            break
    if not runs:
        listed = "\n  ".join(f"{p['pair_id']}  ({p['name']}, {p['started']})"
                             for p in list_pairs(client)) or "(none)"
        raise CompareError(f"no runs of pair {pair!r} in this store; recent pairs:\n  {listed}")
    found: dict[int, dict[str, ArmRun]] = defaultdict(dict)
    for run in runs:  # newest first: an arm's latest run wins
        tags = run.data.tags
        arm, rep = tags.get("arm"), int(tags.get("replicate", 0))
        if arm in ARMS and arm not in found[rep]:
            found[rep][arm] = ArmRun(
                run_id=run.info.run_id, experiment=exps.get(run.info.experiment_id, "?"), arm=arm,
                replicate=rep, pair_id=tags["pair_id"], status=run.info.status,
                start=run.info.start_time / 1000 if run.info.start_time else None,
                end=run.info.end_time / 1000 if run.info.end_time else None,
                params=dict(run.data.params), metrics=dict(run.data.metrics))
    missing = [f"replicate {rep}: no {arm} run (it has: "
               f"{', '.join(f'{a} {r.run_id}' for a, r in arms.items()) or 'nothing'})"
               for rep, arms in sorted(found.items()) for arm in ARMS if arm not in arms]
    if missing:
        raise CompareError(f"pair {pair!r} is incomplete:\n  " + "\n  ".join(missing))
    return dict(sorted(found.items()))


def load_details(client, runs: dict[int, dict[str, ArmRun]]) -> None:
    """Loss curves and per-example losses of every run (the slow part over HTTP)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with tempfile.TemporaryDirectory() as tmp:
        for arms in runs.values():
            for run in arms.values():
                for key in ("train_loss", "eval_loss"):
                    latest: dict[int, tuple[int, float]] = {}
                    for m in client.get_metric_history(run.run_id, key):
                        if m.step not in latest or m.timestamp >= latest[m.step][0]:
                            latest[m.step] = (m.timestamp, m.value)  # a resumed leg re-logs steps
                    run.curves[key] = sorted((s, v) for s, (_, v) in latest.items())
                try:
                    path = client.download_artifacts(run.run_id, eval_examples.FILENAME, tmp)
                except Exception:  # absent artifact: MlflowException or OSError
                    continue
                with open(path, encoding="utf-8") as f:
                    run.examples = eval_examples.parse(f.read())


def recent_pairs(tracking_uri: str) -> list[dict]:
    """`list_pairs` of the store at tracking_uri; CompareError when it cannot be read."""
    client = open_store(tracking_uri)
    with reading_store(tracking_uri):
        return list_pairs(client)


@contextmanager
def reading_store(uri: str):
    """Reading the store: any failure (MlflowException, SQLAlchemy's, a dropped connection) is
    one CompareError line."""
    try:
        yield
    except CompareError:
        raise
    except Exception as e:
        raise store_error(uri, e) from None
