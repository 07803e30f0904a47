"""The compare report as text: rich tables for a terminal, markdown for a pull-request comment.

Both are drawn from the same sections (title, header, rows), so they always say the same thing.
"""

from __future__ import annotations

from training.experiment.config import ARMS


def _f(value, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def _ci(p: dict) -> str:
    if p["ci_low"] is None or p["ci_high"] is None:
        return "-"
    return f"[{p['ci_low']:+.4f}, {p['ci_high']:+.4f}]"


def _lost(count, share) -> str:
    if count is None:
        return "-"
    return f"{count}" + (f" ({share:.1%})" if share is not None else "")


def _value(value) -> str:
    return "(not logged)" if value is None else str(value)


def _wall(seconds) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def sections(report: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    out = []
    reps = report["replicate_results"]
    multi = len(reps) > 1

    rows = []
    costs = any(r["arms"][a]["cost_usd"] is not None for r in reps for a in ARMS)
    for r in reps:
        for arm in ARMS:
            h = r["arms"][arm]
            rows.append(([str(r["replicate"]), _f(r["seed"], ".0f")] if multi else []) + [
                arm, h["status"].lower(), _f(h["steps"], "d"), _f(h["train_loss"]),
                _f(h["eval_loss"]), _f(h["best_eval_loss"]), _f(h["perplexity"], ".2f"),
                _f(h["train_eval_gap"], "+.4f"), _f(h["tokens_per_second"], ",.0f"),
                _wall(h["wall_seconds"])] + ([_f(h["cost_usd"], ".2f")] if costs else []))
    out.append(("Health of each arm", (["rep", "seed"] if multi else []) + [
        "arm", "status", "steps", "train loss", "eval loss", "best eval", "ppl", "gap",
        "tokens/s", "run time"] + (["cost $"] if costs else []), rows))

    if report["fair"]:
        out.append(("Fairness", ["check", "result"],
                    [["parameters", "identical except the training data and the arm"]]))
    else:
        rows = [[str(d["replicate"]), d["between"], d["param"], _value(d["values"][0]),
                 _value(d["values"][1])] for d in report["unfair_params"]]
        out.append(("UNFAIR PAIR: parameters that differ", ["rep", "between", "param", "first",
                                                            "second"], rows))

    rows = []
    for r in reps:  # the rows each arm lost to max_seq_length: data facts, side by side
        for arm in ARMS:
            d = (r.get("data") or {}).get(arm)
            if d and (d["train_lost"] or d["eval_lost"]):
                rows.append(([str(r["replicate"])] if multi else []) + [
                    arm, d["long_examples"] or "-", _f(d["train_rows"], "d"),
                    _lost(d["train_lost"], d["train_lost_share"]), _f(d["eval_rows"], "d"),
                    _lost(d["eval_lost"], d["eval_lost_share"])])
    if rows:
        out.append(("Rows over max_seq_length (dropped or cut; each arm's own data)",
                    (["rep"] if multi else []) + ["arm", "policy", "train rows", "train lost",
                                                  "eval rows", "eval lost"], rows))

    rows = []
    for r in reps:
        if r["paired"]:
            rows.append(_paired_row(str(r["replicate"]) if multi else "pair", r["paired"]))
    if multi and report["paired"]:
        rows.append(_paired_row("all (mean)", report["paired"]))
    if rows:
        out.append(("Paired comparison on the shared eval set (experiment - control, loss per "
                    "token; negative = experiment better)",
                    ["", "examples", "mean diff", "95% CI (bootstrap)", "SE", "exp. better",
                     "detectable (80% power)"], rows))

    s = report["seed_spread"]
    if s:
        a = report["arms"]
        out.append(("Seed-to-seed spread", ["", "value"], [
            ["replicates", str(s["replicates"])],
            ["eval loss sd: control / experiment",
             f"{_f(a['control']['eval_loss_seed_sd'])} / {_f(a['experiment']['eval_loss_seed_sd'])}"],
            ["mean diff per replicate", ", ".join(f"{d:+.4f}" for d in s["diffs"])],
            ["sd of the diff across replicates", _f(s["diff_sd"])],
            [f"95% CI across replicates (t, {s['df']} degree{'s' if s['df'] != 1 else ''} of "
             "freedom)", _ci(s)],
            ["data effect stands out of the seed noise", "yes" if s["stands_out"] else "no"],
        ]))

    if report["criteria"]:
        rows = [[c["name"], c["arm"] or "pair", _f(c["value"]), _f(c["limit"]),
                 {True: "pass", False: "FAIL", None: "not checked"}[c["passed"]]]
                for c in report["criteria"]]
        out.append(("Success criteria", ["criterion", "arm", "value", "limit", "result"], rows))
    return out


def _paired_row(label: str, p: dict) -> list[str]:
    return [label, str(p["n"]), f"{p['mean_diff']:+.4f}", _ci(p), _f(p["se"]),
            f"{p['share_better']:.0%}", _f(p["mde"])]


def _header(report: dict) -> str:
    reps = report["replicates"]
    return (f"pair {report['pair_id']} ({report['experiment']}, "
            f"{reps} replicate{'s' if reps > 1 else ''})")


def print_table(report: dict, console) -> None:
    from rich.markup import escape
    from rich.table import Table

    console.print(f"[bold]{_header(report)}[/]")
    for title, header, rows in sections(report):
        bad = title.startswith("UNFAIR")
        table = Table(title=title, title_justify="left", title_style="bold red" if bad else "bold")
        for i, col in enumerate(header):
            table.add_column(col, justify="left" if i == 0 or col in ("arm", "status", "param", "between",
                                                                         "criterion")
                             else "right", style="red" if bad else None)
        for row in rows:
            table.add_row(*[f"[red]{c}[/]" if c == "FAIL" else escape(c) for c in row])
        console.print(table)
    for note in report["notes"]:
        console.print(f"note: {escape(note)}")
    v = report["verdict"]
    style = "green" if v["exit_code"] == 0 else "red"
    console.print(f"[bold {style}]verdict:[/] {escape(v['summary'])}")


def markdown(report: dict) -> str:
    lines = [f"### {_header(report)}", ""]
    for title, header, rows in sections(report):
        lines += [f"**{title}**", "", "| " + " | ".join(header) + " |",
                  "|" + "|".join(" --- " for _ in header) + "|"]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
        lines.append("")
    lines += [f"> note: {n}" for n in report["notes"]]
    v = report["verdict"]
    lines += ["", f"**Verdict:** {v['summary']}", ""]
    return "\n".join(lines)
