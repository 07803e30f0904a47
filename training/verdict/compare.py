"""`train compare`: the verdict on a pair, from its MLflow runs (local store or a workspace's).

The pair's runs are read from the store by `compare_store.py` (by their tags: `parent_pair_id`
for all seed replicates, else `pair_id`; `arm`, `replicate`). The report (a plain dict, the
`--format json` output documented in the README) holds:

- fairness (`fairness.py`): every setting of the two arms side by side; any difference is
  listed, and the pair is not to be trusted; the arms' own data facts (rows, rows lost to
  max_seq_length) side by side, flagged only when the shared eval set was treated differently or
  the arms lost very different shares of their rows;
- health of each arm: final and best eval loss, perplexity, train/eval gap, steps, tokens/s,
  wall time, cost when known;
- the paired comparison on the shared eval set (`stats.py`), per replicate and overall,
  with the seed-to-seed spread when there are replicates; below a statistic's minimum sample size
  (`stats.MINIMUMS`) the verdict is not drawn and the eval-loss criteria are not checked;
- the success criteria of the experiment file (logged with the runs as params), each with its
  value, and the exit code: 0 all pass on a fair, finished pair; 1 otherwise.

Rendering lives in `compare_render.py`, the figure in `compare_plot.py`.
"""

from __future__ import annotations

import math

from training.experiment.config import ARMS
from training.experiment.tracking import redacted
from training.strict_json import finite, number
from training.verdict import stats
from training.verdict.fairness import (
    REPLICATE_PARAMS,
    data_facts,
    data_problems,
    differences,
)
from training.verdict.store import (
    ArmRun,
    find_runs,
    iso_time,
    load_details,
    open_store,
    reading_store,
)

SCHEMA = "paired-finetune/compare/v1"


# ----------------------------------------------------------------------------- the report
def azure_cost(params: dict, seconds: float | None, outputs) -> float | None:
    """An Azure ML run's cost: its duration x nodes x the VM size's price per node hour (the
    experiment's azure.price_per_hour, else hardware.py's list price). The VM size, in the
    budget guard's order: the stack's size for the cluster the run named, else the experiment's
    azure.vm_size, else the infra default."""
    from training.plan.hardware import DEFAULT_CPU_VM_SIZE, DEFAULT_GPU_VM_SIZE, vm_size

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
    price = number(params.get("azure.price_per_hour"))
    if price is None and size and (vm := vm_size(size)):
        price = vm.price_per_hour
    nodes = number(params.get("azure.instance_count")) or 1
    return None if price is None else seconds / 3600 * nodes * price


def health(run: ArmRun, outputs=None) -> dict:
    m, curves = run.metrics, run.curves
    seconds = run.end - run.start if None not in (run.start, run.end) else None
    evals = [v for _, v in curves.get("eval_loss", []) if number(v) is not None]
    trains = curves.get("train_loss", [])
    eval_loss = number(m.get("final_eval_loss", m.get("eval_loss")))
    train_loss = number(m.get("final_train_loss", trains[-1][1] if trains else None))
    steps = m.get("final_global_step") or max((s for s, _ in trains + curves.get("eval_loss", [])),
                                              default=None)
    return {
        "run_id": run.run_id, "pair_id": run.pair_id, "status": run.status,
        "finished": run.status == "FINISHED" and eval_loss is not None,
        "seed": number(run.params.get("training.seed")),
        "eval_loss": eval_loss, "best_eval_loss": min(evals) if evals else eval_loss,
        "perplexity": math.exp(eval_loss) if eval_loss is not None and eval_loss < 700 else None,
        "train_loss": train_loss,
        "train_eval_gap": eval_loss - train_loss if None not in (eval_loss, train_loss) else None,
        "steps": int(steps) if steps is not None else None,
        "max_steps": number(m.get("final_max_steps", run.params.get("training.max_steps"))),
        "tokens_per_second": number(m.get("final_tokens_per_second", m.get("tokens_per_second"))),
        "wall_seconds": seconds,
        "cost_usd": number(m.get("cost_usd")) if "cost_usd" in m else azure_cost(
            run.params, seconds, outputs),
        "started": iso_time(run.start),
    }


def _pairable(control: ArmRun, experiment: ArmRun) -> tuple[list, list, str | None]:
    """The two arms' per-example losses, matched, or why they cannot be paired."""
    shared = control.params.get("data.eval_sha256")
    if not shared or shared != experiment.params.get("data.eval_sha256"):
        return [], [], "no shared eval set (each arm was evaluated on its own holdout): " \
                       "aggregate losses only"
    if control.examples is None or experiment.examples is None:
        running = [r.arm for r in (control, experiment) if r.status == "RUNNING"]
        if running:  # written at the end of training: not there *yet*
            return [], [], (f"per-example eval losses are not recorded yet: {' and '.join(running)} "
                            "still running (they are written when an arm finishes)")
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
        cl, el, why = _pairable(c, e)
        facts = {a: data_facts(arms[a].params, None if why else len(cl)) for a in ARMS}
        diff = differences(c.params, e.params, "control vs experiment", k)
        diff += data_problems(facts, k)
        unfair += diff
        if k != min(runs):
            for arm in ARMS:
                unfair += differences(first[arm].params, arms[arm].params,
                                      f"{arm}: replicate {min(runs)} vs {k}", k, REPLICATE_PARAMS)
        if why and "differ" in why:
            unfair.append({"replicate": k, "between": "control vs experiment",
                           "param": "eval examples (index, sha256)", "values": [None, None]})
        if why:
            notes.append(f"replicate {k}: {why}" if len(runs) > 1 else why)
        else:
            losses["control"].append(cl)
            losses["experiment"].append(el)
        paired = stats.paired(cl, el, resamples=resamples).to_dict() if not why and cl else None
        reps.append({"replicate": k, "pair_id": c.pair_id, "seed": number(c.params.get(
            "training.seed")), "arms": {a: health(arms[a], outputs) for a in ARMS}, "paired": paired,
            "data": facts, "differences": diff})

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
    scored = {a: [r["data"][a]["eval_examples"] for r in reps] for a in ARMS}
    too_few = {a: min(n) for a, n in scored.items() if None not in n and min(n) < stats.MIN_EXAMPLES}
    for arm, n in too_few.items():
        notes.append(f"{arm}: its eval set has {n} example{'s' if n != 1 else ''}, fewer than the "
                     f"{stats.MIN_EXAMPLES} an eval loss needs to be judged: its eval-loss "
                     "criteria are not checked")
    criteria = _criteria(first["control"].params, arms_summary, total_cost, set(too_few))
    fair = not unfair
    finished = all(a["finished"] for a in arms_summary.values())
    report = {
        "schema": SCHEMA, "pair_id": pair, "experiment": first["control"].experiment,
        "tracking_uri": redacted(tracking_uri), "replicates": len(runs),
        "fair": fair, "unfair_params": unfair, "arms": arms_summary, "replicate_results": reps,
        "paired": overall, "seed_spread": spread, "notes": notes, "criteria": criteria,
        "cost_usd": total_cost,
    }
    unchecked = any(c["arm"] in too_few for c in criteria)  # a criterion the size left open
    report["verdict"] = _verdict(report, fair, finished, not unchecked)
    return finite(report)  # strict JSON: NaN or infinity become null


def _criteria(params: dict, arms: dict, total_cost: float | None,
              too_few: set[str] = frozenset()) -> list[dict]:
    out = []
    for name, metric in (("max_eval_loss", "eval_loss"), ("max_train_eval_gap", "train_eval_gap")):
        limit = number(params.get(f"success.{name}"))
        if limit is None:
            continue
        for arm in ARMS:  # an arm that did not finish is not judged on an earlier value
            value = arms[arm][metric]
            out.append({"name": name, "arm": arm, "limit": limit, "value": value,
                        "passed": (value is not None and value <= limit)
                        if arms[arm]["finished"] and arm not in too_few else None})
    budget = number(params.get("budget_usd"))
    if budget is not None:
        out.append({"name": "budget_usd", "arm": None, "limit": budget, "value": total_cost,
                    "passed": None if total_cost is None else total_cost <= budget})
    return out


def _interval(p: dict) -> str:
    if p["ci_low"] is None:
        return "no interval: one example"
    return f"95% CI {p['ci_low']:+.4f} to {p['ci_high']:+.4f}"


def _seed_level(s: dict | None) -> str:
    if s is None:
        return ""
    df = s["df"]
    text = (f"; across {s['replicates']} replicates 95% t interval {s['ci_low']:+.4f} to "
            f"{s['ci_high']:+.4f} ({df} degree{'s' if df != 1 else ''} of freedom")
    if df == 1:
        text += f", t = {s['t']:.1f}: a wide interval; 3 or more replicates narrow it"
    return text + ")"


def _verdict(report: dict, fair: bool, finished: bool, enough_eval: bool = True) -> dict:
    """`enough_eval`: each arm's eval set is large enough for its eval-loss criteria."""
    p, s = report["paired"], report["seed_spread"]
    drawn = enough_eval and (p is None or p["enough"])
    significant = bool(p and p["enough"] and p["excludes_zero"] and (s is None or s["stands_out"]))
    better = None
    if significant:
        better = "experiment" if p["mean_diff"] < 0 else "control"
    failed = [c for c in report["criteria"] if c["passed"] is False]
    trusted = fair and finished
    if not fair:
        text = "UNFAIR PAIR: the arms differ in more than their training data; cannot be trusted"
        if p:
            text += f" (measured: {p['mean_diff']:+.4f}, {_interval(p)})"
    elif not finished:
        text = "not every run finished: the comparison is incomplete"
    elif p is not None and not p["enough"]:
        text = (f"the verdict cannot be drawn: the shared eval set has {p['n']} example"
                f"{'s' if p['n'] != 1 else ''}, fewer than the {p['min_examples']} the paired "
                f"statistics need (measured: {p['mean_diff']:+.4f}, {_interval(p)}; not "
                "significant whatever it shows)")
    elif not enough_eval:
        text = ("the verdict cannot be drawn: an eval set is smaller than "
                f"{stats.MIN_EXAMPLES} examples (see notes)")
    elif p is None:
        text = "no paired comparison (see notes)"
    elif significant:
        text = (f"{better} is better: eval loss {p['mean_diff']:+.4f} per token "
                f"({_interval(p)}), experiment better on "
                f"{p['share_better']:.0%} of {p['n']} examples") + _seed_level(s)
    else:
        text = (f"no clear difference: {p['mean_diff']:+.4f} ({_interval(p)}"
                + ("" if s is None or s["stands_out"] or not p["excludes_zero"]
                   else "; within the seed-to-seed noise")
                + f"); this eval set detects differences of about {p['mde']:.4f} or more"
                + _seed_level(s))
    if failed:
        text += f"; {len(failed)} success criteria failed"
    ok = trusted and not failed and drawn
    return {"trusted": trusted, "significant": significant, "better": better, "drawn": drawn,
            "criteria_passed": (False if failed else None if not finished or not drawn
                                else True),
            "summary": text, "exit_code": 0 if ok else 1}


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
    with reading_store(tracking_uri):
        runs = find_runs(client, pair)
        load_details(client, runs)
    return build(runs, pair, tracking_uri, resamples, outputs), runs
