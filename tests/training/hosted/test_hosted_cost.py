"""The hosted pair's training cost: the auto epoch rule, billed tokens, the price tables."""

import pytest

from training.hosted import cost as hosted_cost
from training.hosted import service as hosted


def test_auto_epochs_and_cost():
    assert [hosted_cost.auto_epochs(n) for n in (10, 40, 1000, 20_000)] == [10, 3, 3, 1]
    cost = hosted_cost.estimate_hosted_cost("gpt-4o-mini-2024-07-18", [1000] * 1000)
    assert (cost.n_epochs, cost.billed_tokens, cost.usd) == (3, 3_000_000, 9.0)
    assert cost.prices_as_of == hosted_cost.PRICES_AS_OF
    cost = hosted_cost.estimate_hosted_cost("gpt-4o-mini-2024-07-18", [100_000, 10], n_epochs=2,
                                       prices={"gpt-4o-mini-2024-07-18": 1.0})
    assert (cost.tokens_per_epoch, cost.usd, cost.prices_as_of) == (65_546, 0.1311, "user")
    with pytest.raises(hosted.HostedInputError, match="no training price for 'gpt-35-turbo-0125'"):
        hosted_cost.estimate_hosted_cost("gpt-35-turbo-0125", [10])


def test_price_table_file(tmp_path):
    path = tmp_path / "prices.yaml"
    path.write_text("as_of: 2026-11-01\ngpt-4o-mini-2024-07-18: 2.5\n")
    assert hosted_cost.load_price_table(path) == {"gpt-4o-mini-2024-07-18": 2.5}
    path.write_text("gpt-4o-mini-2024-07-18: cheap\n")
    with pytest.raises(hosted.HostedInputError, match="price must be a number"):
        hosted_cost.load_price_table(path)


def test_pair_cost_from_a_validation_report(tmp_path):
    report = hosted.HostedReport(files={
        "control": hosted.HostedFile("control", "c", tokens=[1000] * 40),
        "experiment": hosted.HostedFile("experiment", "e", tokens=[2000] * 40),
        "eval": hosted.HostedFile("eval", "v", tokens=[5000] * 10)})
    costs = hosted_cost.estimate_pair_cost(report, "gpt-4.1-mini-2025-04-14", n_epochs=2)
    assert {a: c.usd for a, c in costs.items()} == {"control": 0.4, "experiment": 0.8}
