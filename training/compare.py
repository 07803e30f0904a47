"""`train compare`: the verdict on a pair, from its MLflow runs (local store or a workspace's).

A pair's runs are found by their tags: `parent_pair_id` (all seed replicates of a pair) or
`pair_id` (one replicate, or runs logged before replicates existed), `arm` and `replicate`. The
report (a plain dict, the `--format json` output documented in the README) holds:

- fairness: the two arms' parameters side by side; any difference other than the training data
  (its hash and row count) and the arm is listed, and the pair is not to be trusted;
- health of each arm: final and best eval loss, perplexity, train/eval gap, steps, tokens/s,
  wall time, cost when known;
- the paired comparison on the shared eval set (`training/stats.py`), per replicate and overall,
  with the seed-to-seed spread when there are replicates;
- the success criteria of the experiment file (logged with the runs as params), each with its
  value, and the exit code: 0 all pass on a fair, finished pair; 1 otherwise.

Rendering lives in `compare_render.py`, the figure in `compare_plot.py`.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

from training import eval_examples, stats
from training.config import ARMS
from training.tracking import redacted

SCHEMA = "paired-finetune/compare/v1"
PAIR_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# What may differ between the arms of a fair pair: the training data and the arm itself (job
# inputs naming the arm's data asset included, as the Azure ML runs log them).
ARM_PARAMS = {"arm", "data.train_sha256", "data.train_rows", "train_file", "data.train_file",
              "train_data"}
# What may differ between replicates of the same arm.
REPLICATE_PARAMS = {"training.seed", "pair_id", "config_sha256"}


class CompareError(Exception):
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
        entry["started"] = _iso(run.info.start_time / 1000)  # runs come newest first
        entry["arms"][tags["arm"]].append(run.info.status)
    out = list(pairs.values())[:limit]
    for entry in out:
        entry["arms"] = {a: entry["arms"].get(a, []) for a in ARMS}
    return out


def find_runs(client, pair: str) -> dict[int, dict[str, ArmRun]]:
    """{replicate: {arm: run}} for a pair id or a parent pair id; CompareError when a pair or an
    arm is missing, naming what exists."""
    if not PAIR_RE.match(pair):
        raise CompareError(f"{pair!r} is not a pair id (letters, digits, '.', '_', '-')")
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


# ----------------------------------------------------------------------------- the report
def _iso(seconds: float | None) -> str | None:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds") if seconds else None


def _num(value) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def azure_cost(params: dict, seconds: float | None, outputs) -> float | None:
    """An Azure ML run's cost: its duration x nodes x the VM size's price per node hour (the
    experiment's azure.price_per_hour, else hardware.py's list price). The VM size, in the
    budget guard's order: the stack's size for the cluster the run named, else the experiment's
    azure.vm_size, else the infra default."""
    from training.hardware import DEFAULT_CPU_VM_SIZE, DEFAULT_GPU_VM_SIZE, vm_size

    if seconds is None or outputs is None:
        return None
    compute = params.get("azure.compute", "gpu")
    kind = {"gpu": "gpu", outputs.gpu_cluster: "gpu", "cpu": "cpu",
            outputs.cpu_cluster: "cpu"}.get(compute, "gpu")
    size = outputs.gpu_vm_size if kind == "gpu" else outputs.cpu_vm_size
    if not size:
        given = params.get("azure.vm_size")
        size = given if given not in (None, "", "None") else (
            DEFAULT_GPU_VM_SIZE if kind == "gpu" else DEFAULT_CPU_VM_SIZE)
    price = _num(params.get("azure.price_per_hour"))
    if price is None and size and (vm := vm_size(size)):
        price = vm.price_per_hour
    nodes = _num(params.get("azure.instance_count")) or 1
    return None if price is None else seconds / 3600 * nodes * price


def health(run: ArmRun, outputs=None) -> dict:
    m, curves = run.metrics, run.curves
    seconds = run.end - run.start if None not in (run.start, run.end) else None
    evals = [v for _, v in curves.get("eval_loss", [])]
    trains = curves.get("train_loss", [])
    eval_loss = _num(m.get("final_eval_loss", m.get("eval_loss")))
    train_loss = _num(m.get("final_train_loss", trains[-1][1] if trains else None))
    steps = m.get("final_global_step") or max((s for s, _ in trains + curves.get("eval_loss", [])),
                                              default=None)
    return {
        "run_id": run.run_id, "pair_id": run.pair_id, "status": run.status,
        "finished": run.status == "FINISHED" and eval_loss is not None,
        "seed": _num(run.params.get("training.seed")),
        "eval_loss": eval_loss, "best_eval_loss": min(evals) if evals else eval_loss,
        "perplexity": math.exp(eval_loss) if eval_loss is not None else None,
        "train_loss": train_loss,
        "train_eval_gap": eval_loss - train_loss if None not in (eval_loss, train_loss) else None,
        "steps": int(steps) if steps is not None else None,
        "max_steps": _num(m.get("final_max_steps", run.params.get("training.max_steps"))),
        "tokens_per_second": _num(m.get("final_tokens_per_second", m.get("tokens_per_second"))),
        "wall_seconds": seconds,
        "cost_usd": _num(m.get("cost_usd")) if "cost_usd" in m else azure_cost(
            run.params, seconds, outputs),
        "started": _iso(run.start),
    }


def differences(a: dict, b: dict, allowed: set[str], between: str, replicate: int) -> list[dict]:
    """Parameters that differ (or exist on one side only), except the allowed ones."""
    keys = sorted((a.keys() | b.keys()) - allowed)
    return [{"replicate": replicate, "between": between, "param": k, "values": [a.get(k), b.get(k)]}
            for k in keys if a.get(k) != b.get(k)]


def _pairable(control: ArmRun, experiment: ArmRun) -> tuple[list, list, str | None]:
    """The two arms' per-example losses, matched, or why they cannot be paired."""
    shared = control.params.get("data.eval_sha256")
    if not shared or shared != experiment.params.get("data.eval_sha256"):
        return [], [], "no shared eval set (each arm was evaluated on its own holdout): " \
                       "aggregate losses only"
    if control.examples is None or experiment.examples is None:
        return [], [], "per-example eval losses were not recorded: aggregate losses only"
    key = [(r["index"], r["sha256"]) for r in control.examples]
    if key != [(r["index"], r["sha256"]) for r in experiment.examples]:
        return [], [], "the arms' eval examples differ (index or content hash): not paired"
    both = [(c["loss"], e["loss"]) for c, e in zip(control.examples, experiment.examples,
                                                  strict=True)
            if c["loss"] is not None and e["loss"] is not None]
    return [c for c, _ in both], [e for _, e in both], None


def build(runs: dict[int, dict[str, ArmRun]], pair: str, tracking_uri: str,
          resamples: int = stats.RESAMPLES, outputs=None) -> dict:
    """The whole verdict as a JSON-able dict (see the README for its fields). `outputs`: the
    stack outputs of the workspace the runs ran in (their cost), None for local runs."""
    reps, notes, unfair = [], [], []
    losses: dict[str, list] = {"control": [], "experiment": []}
    first = runs[min(runs)]
    for k, arms in runs.items():
        c, e = arms["control"], arms["experiment"]
        diff = differences(c.params, e.params, ARM_PARAMS, "control vs experiment", k)
        unfair += diff
        if k != min(runs):
            for arm in ARMS:
                unfair += differences(first[arm].params, arms[arm].params,
                                      ARM_PARAMS | REPLICATE_PARAMS,
                                      f"{arm}: replicate {min(runs)} vs {k}", k)
        cl, el, why = _pairable(c, e)
        if why and "differ" in why:
            unfair.append({"replicate": k, "between": "control vs experiment",
                           "param": "eval examples (index, sha256)", "values": [None, None]})
        if why:
            notes.append(f"replicate {k}: {why}" if len(runs) > 1 else why)
        else:
            losses["control"].append(cl)
            losses["experiment"].append(el)
        paired = stats.paired(cl, el, resamples=resamples).to_dict() if not why and cl else None
        reps.append({"replicate": k, "pair_id": c.pair_id, "seed": _num(c.params.get(
            "training.seed")), "arms": {a: health(arms[a], outputs) for a in ARMS}, "paired": paired,
            "differences": diff})

    overall, spread = None, None
    if losses["control"] and len(losses["control"]) == len(runs):
        try:
            p, s = stats.aggregate(losses["control"], losses["experiment"], resamples=resamples)
            overall, spread = p.to_dict(), s.to_dict() if s else None
        except ValueError as err:  # replicates scored on different eval sets
            notes.append(f"replicates not aggregated: {err}")

    arms_summary = {}
    for arm in ARMS:
        hs = [r["arms"][arm] for r in reps]
        agg = {}
        for key in ("eval_loss", "best_eval_loss", "perplexity", "train_loss", "train_eval_gap",
                    "tokens_per_second", "wall_seconds", "cost_usd"):
            vals = [h[key] for h in hs if h[key] is not None]
            mean, sd = stats.mean_sd(vals) if len(vals) == len(hs) else (None, None)
            agg[key] = mean
            if key == "eval_loss":
                agg["eval_loss_seed_sd"] = sd
        agg["finished"] = all(h["finished"] for h in hs)
        arms_summary[arm] = agg

    costs = [r["arms"][a]["cost_usd"] for r in reps for a in ARMS]
    total_cost = sum(costs) if None not in costs else None
    criteria = _criteria(first["control"].params, arms_summary, total_cost)
    fair = not unfair
    finished = all(a["finished"] for a in arms_summary.values())
    report = {
        "schema": SCHEMA, "pair_id": pair, "experiment": first["control"].experiment,
        "tracking_uri": redacted(tracking_uri), "replicates": len(runs),
        "fair": fair, "unfair_params": unfair, "arms": arms_summary, "replicate_results": reps,
        "paired": overall, "seed_spread": spread, "notes": notes, "criteria": criteria,
        "cost_usd": total_cost,
    }
    report["verdict"] = _verdict(report, fair, finished)
    return report


def _criteria(params: dict, arms: dict, total_cost: float | None) -> list[dict]:
    out = []
    for name, metric in (("max_eval_loss", "eval_loss"), ("max_train_eval_gap", "train_eval_gap")):
        limit = _num(params.get(f"success.{name}"))
        if limit is None:
            continue
        for arm in ARMS:  # an arm that did not finish is not judged on an earlier value
            value = arms[arm][metric]
            out.append({"name": name, "arm": arm, "limit": limit, "value": value,
                        "passed": (value is not None and value <= limit)
                        if arms[arm]["finished"] else None})
    budget = _num(params.get("budget_usd"))
    if budget is not None:
        out.append({"name": "budget_usd", "arm": None, "limit": budget, "value": total_cost,
                    "passed": None if total_cost is None else total_cost <= budget})
    return out


def _verdict(report: dict, fair: bool, finished: bool) -> dict:
    p, s = report["paired"], report["seed_spread"]
    significant = bool(p and p["excludes_zero"] and (s is None or s["stands_out"]))
    better = None
    if significant:
        better = "experiment" if p["mean_diff"] < 0 else "control"
    failed = [c for c in report["criteria"] if c["passed"] is False]
    trusted = fair and finished
    if not fair:
        text = "UNFAIR PAIR: the arms differ in more than their training data; cannot be trusted"
        if p:
            text += f" (measured: {p['mean_diff']:+.4f}, 95% CI {p['ci_low']:+.4f} to " \
                    f"{p['ci_high']:+.4f})"
    elif not finished:
        text = "not every run finished: the comparison is incomplete"
    elif p is None:
        text = "no paired comparison (see notes)"
    elif significant:
        text = (f"{better} is better: eval loss {p['mean_diff']:+.4f} per token "
                f"(95% CI {p['ci_low']:+.4f} to {p['ci_high']:+.4f}), experiment better on "
                f"{p['share_better']:.0%} of {p['n']} examples")
    else:
        text = (f"no clear difference: {p['mean_diff']:+.4f} (95% CI {p['ci_low']:+.4f} to "
                f"{p['ci_high']:+.4f}"
                + ("" if s is None or s["stands_out"] or not p["excludes_zero"]
                   else "; within the seed-to-seed noise")
                + f"); this eval set detects differences of about {p['mde']:.4f} or more")
    if failed:
        text += f"; {len(failed)} success criteria failed"
    ok = trusted and not failed
    return {"trusted": trusted, "significant": significant, "better": better,
            "criteria_passed": not failed if finished else None, "summary": text,
            "exit_code": 0 if ok else 1}


def example_diffs(runs: dict[int, dict[str, ArmRun]]):
    """Per-example differences (experiment - control), averaged over replicates; None when the
    arms cannot be paired."""
    import numpy as np

    per = []
    for arms in runs.values():
        c, e, why = _pairable(arms["control"], arms["experiment"])
        if why or not c:
            return None
        per.append(np.array(e) - np.array(c))
    if len({d.size for d in per}) != 1:
        return None
    return np.mean(per, axis=0)


def compare(tracking_uri: str, pair: str, resamples: int = stats.RESAMPLES, outputs=None):
    """(report, runs) of a pair in the store at tracking_uri; CompareError for bad input."""
    client = open_store(tracking_uri)
    with _reading(tracking_uri):
        runs = find_runs(client, pair)
        load_details(client, runs)
    return build(runs, pair, tracking_uri, resamples, outputs), runs


def recent_pairs(tracking_uri: str) -> list[dict]:
    """`list_pairs` of the store at tracking_uri; CompareError when it cannot be read."""
    client = open_store(tracking_uri)
    with _reading(tracking_uri):
        return list_pairs(client)


@contextmanager
def _reading(uri: str):
    """Reading the store: any failure (MlflowException, SQLAlchemy's, a dropped connection) is
    one CompareError line."""
    try:
        yield
    except CompareError:
        raise
    except Exception as e:
        raise store_error(uri, e) from None
