"""experiment/pair.py: one rule for a pair id, one derivation, one replicate name."""

import pytest

from training.errors import BadInput
from training.experiment.pair import (
    check_pair_id,
    derive_pair_id,
    name_slug,
    pair_id_problem,
    replicate_id,
    replicate_ids,
)


@pytest.mark.parametrize("pair_id", ["abc\n", "a b", "UPPER", "a.b", "../x", "-x", "_x", "", "é",
                                     "x-sweep", "x-sweep-control", "a" * 202, "ab\x00"])
def test_ids_that_break_the_rule(pair_id):
    assert pair_id_problem(pair_id)
    with pytest.raises(BadInput, match="is not a pair id"):
        check_pair_id(pair_id)


@pytest.mark.parametrize("pair_id", ["a", "paired-comments-2dbdb98c0e", "x_1-r0", "a" * 201,
                                     "sweeps-x", "my-sweeper"])
def test_ids_that_keep_it(pair_id):
    assert pair_id_problem(pair_id) is None and check_pair_id(pair_id) == pair_id


def test_derived_ids_keep_the_rule_and_depend_on_every_input():
    first = derive_pair_id("Demo.v2 sweep", "c0ffee", [("control", "aa"), ("experiment", "bb")])
    assert check_pair_id(first) == first and first.startswith("demo-v2-sweeps-")
    assert derive_pair_id("x-sweep", "c", []).startswith("x-sweeps-")  # '-sweep' is the sweeps'
    assert first != derive_pair_id("Demo.v2 sweep", "c0ffee", [("control", "aa"),
                                                               ("experiment", "bc")])
    assert first != derive_pair_id("Demo.v2 sweep", "c0ffef", [("control", "aa"),
                                                               ("experiment", "bb")])
    assert name_slug("A.b_c") == "a-b-c"


def test_replicate_ids_obey_the_same_rule():
    assert replicate_ids("p", 1) == ["p"] and replicate_ids("p", 2) == ["p-r0", "p-r1"]
    assert replicate_id("a" * 198, 0) == "a" * 198 + "-r0"
    with pytest.raises(BadInput, match="replicate id"):
        replicate_id("a" * 199, 0)  # 202 characters: a pair id nothing could name


def test_names_that_clash_with_another_pairs_replicates():
    from training.experiment.pair import clash

    # a pair's own runs: plain, or each replicate under its parent
    assert clash("p", 1, "p", "p") is None and clash("p", 1, "p", None) is None
    assert clash("p", 2, "p-r1", "p") is None
    # --pair-id collide-r0 beside a replicated pair collide
    assert "'collide-r0' is already the name of replicate 'collide-r0' of pair 'collide'" in \
        clash("collide-r0", 1, "collide-r0", "collide")
    # a replicated collide beside a pair collide-r0
    assert "'collide-r0' is already the name of pair 'collide-r0'" in \
        clash("collide", 2, "collide-r0", "collide-r0")
    # the id reused with another number of replicates
    assert "another replicate layout" in clash("collide", 1, "collide-r0", "collide")
    assert "another replicate layout" in clash("collide", 2, "collide", "collide")
    # a pair whose id merely starts the same way is another pair, not a clash
    assert clash("collide", 1, "collide-other", "collide-other") is None
    assert clash("collide", 2, "collide-r2", "collide-r2") is None  # replicates 0 and 1 only


def test_a_replicate_id_splits_back_into_its_pair_and_number():
    from training.experiment.pair import split_replicate_id

    assert split_replicate_id(replicate_id("my-pair", 12)) == ("my-pair", 12)
    assert split_replicate_id("my-r-pair") is None and split_replicate_id("-r1") is None
    assert split_replicate_id("pair-rx") is None and split_replicate_id("pair") is None
