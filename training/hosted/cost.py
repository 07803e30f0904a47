"""The training cost of a hosted pair (pure): billed tokens x epochs x a dated price per million.

`estimate_hosted_cost` is what `train estimate` calls for the openai and azure-openai backends, once
per arm (the pair costs the sum). Prices are OpenAI's list prices as of PRICES_AS_OF; users pass
their own table (`load_price_table`) when those change or for Azure OpenAI, whose prices depend on
the region and deployment type.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from training.hosted.service import HostedInputError, base_of, example_token_limit

# Training price, USD per million billed tokens (tokens in the file x epochs).
PRICES_AS_OF = "2025-06-01"
TRAINING_USD_PER_MILLION = {
    "gpt-4.1-2025-04-14": 25.00,
    "gpt-4.1-mini-2025-04-14": 5.00,
    "gpt-4.1-nano-2025-04-14": 1.50,
    "gpt-4o-2024-08-06": 25.00,
    "gpt-4o-mini-2024-07-18": 3.00,
    "gpt-4o-mini": 3.00,
    "gpt-3.5-turbo-0125": 8.00,
    "gpt-3.5-turbo-1106": 8.00,
    "gpt-3.5-turbo": 8.00,
}


def auto_epochs(n_examples: int) -> int:
    """The epochs `n_epochs: auto` resolves to, by the rule OpenAI documents in its cookbook: 3,
    raised so that small sets see at least 100 examples (at most 25 epochs) and lowered so that
    large sets see at most 25,000 (at least 1)."""
    if n_examples <= 0:
        return 0
    if n_examples * 3 < 100:
        return min(25, math.ceil(100 / n_examples))
    if n_examples * 3 > 25_000:
        return max(1, 25_000 // n_examples)
    return 3


def load_price_table(path: str | Path) -> dict[str, float]:
    """A user's price table: a JSON or YAML mapping of model id to USD per million training
    tokens (an `as_of` key is allowed and ignored)."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise HostedInputError(f"{path}: cannot read the price table ({e})") from None
    if not isinstance(data, dict):
        raise HostedInputError(f"{path}: expected a mapping of model id to USD per million tokens")
    table = {}
    for model, price in data.items():
        if model == "as_of":
            continue
        if isinstance(price, bool) or not isinstance(price, int | float) or price < 0:
            raise HostedInputError(f"{path}: {model}: price must be a number >= 0, got {price!r}")
        table[str(model)] = float(price)
    return table


@dataclass(frozen=True)
class HostedCost:
    model: str
    n_examples: int
    n_epochs: int
    tokens_per_epoch: int  # each example counted up to the model's limit
    billed_tokens: int  # tokens_per_epoch x n_epochs
    usd_per_million: float
    usd: float
    prices_as_of: str


def estimate_hosted_cost(model: str, example_tokens: Sequence[int], n_epochs: int | str = "auto",
                         prices: dict[str, float] | None = None,
                         token_limit: int | None = None) -> HostedCost:
    """Training cost of one arm: billed tokens (tokens in the file x epochs) x price per million.
    `auto` epochs resolve as `auto_epochs` does. `prices` overrides the built-in table (then
    `prices_as_of` reads "user"). For `train estimate`; the pair costs the sum over both arms."""
    table = TRAINING_USD_PER_MILLION if prices is None else prices
    price = table.get(model, table.get(base_of(model)))
    if price is None:
        raise HostedInputError(f"no training price for {model!r}: add it to a price table "
                               f"(known: {', '.join(sorted(table))})")
    limit = example_token_limit(model, token_limit)
    per_epoch = sum(min(int(t), limit) for t in example_tokens)
    epochs = auto_epochs(len(example_tokens)) if n_epochs == "auto" else int(n_epochs)
    billed = per_epoch * epochs
    return HostedCost(model, len(example_tokens), epochs, per_epoch, billed, price,
                      round(billed / 1e6 * price, 4), PRICES_AS_OF if prices is None else "user")


def estimate_pair_cost(report, model: str, n_epochs: int | str = "auto",
                       prices: dict[str, float] | None = None,
                       token_limit: int | None = None) -> dict[str, HostedCost]:
    """Both arms of a validated pair (a `training.hosted.HostedReport`): {arm: HostedCost}. The
    shared eval file is not billed for training."""
    return {arm: estimate_hosted_cost(model, report.files[arm].tokens, n_epochs, prices,
                                      token_limit)
            for arm in ("control", "experiment")}


def pair_cost(cfg, report) -> dict[str, HostedCost]:
    """Each arm's cost on the service, from the validated data's report."""
    return estimate_pair_cost(report, cfg.base_model, cfg.openai.n_epochs,
                              token_limit=cfg.openai.example_token_limit)


def budget_problems(cfg, costs: dict[str, HostedCost]) -> list[str]:
    """Why the pair exceeds budget_usd (empty: within it, or no budget)."""
    total = sum(c.usd for c in costs.values())
    if cfg.budget_usd is None or total <= cfg.budget_usd:
        return []
    return [f"the estimate {total:,.2f} USD exceeds budget_usd {cfg.budget_usd:,.2f}"]
