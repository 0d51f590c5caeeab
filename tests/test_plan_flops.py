import pytest

from edgeprune.core.errors import EdgepruneError
from edgeprune.core.source import resolve


def test_dynamicvit_token_plan_0_7():
    src = resolve("deit_small:dynamicvit@0.7")
    assert src.plan.tokens_per_block == (197, 197, 197, 138, 138, 138, 97, 97, 97, 68, 68, 68)
    assert src.config.prune_locs == (3, 6, 9)
    assert [s.tokens_out for s in src.plan.selectors] == [138, 97, 68]


@pytest.mark.parametrize(
    "spec,paper,which",
    [
        ("deit_tiny", 1.3, "dense"),
        ("deit_small", 4.6, "dense"),
        ("deit_base", 17.6, "dense"),
        ("deit_small:dynamicvit@0.7", 2.9, "pruned"),
        ("deit_base:dynamicvit@0.7", 11.4, "pruned"),
    ],
)
def test_gflops_match_papers_within_3_percent(spec, paper, which):
    fl = resolve(spec).flops()
    got = getattr(fl, which)
    assert abs(got - paper) / paper <= 0.03, (spec, got, paper)


def test_selectors_counted_apart():
    fl = resolve("deit_small:dynamicvit@0.7").flops()
    assert 0.05 < fl.selectors < 0.2
    assert fl.total == pytest.approx(fl.pruned + fl.selectors)
    assert fl.dense == pytest.approx(resolve("deit_small").flops().dense)


@pytest.mark.parametrize(
    "keep,locs,match",
    [
        ("0,0.5,0.2", None, "outside"),
        ("-0.5,0.2,0.1", None, "outside"),
        ("1.5,0.5,0.2", None, "outside"),
        ("nan,0.5,0.2", None, "outside"),
        ("a,b,c", None, "not a number"),
        ("0.5,0.7,0.3", None, "grow"),
        (None, "3,6,12", "outside the model"),
        (None, "0,6,9", "outside the model"),
        (None, "3,3,9", "duplicated"),
        (None, "3,6", "ratios"),
        ("0.001,0.001,0.001", None, "keeps no patch token"),
    ],
)
def test_impossible_schedules_fail_clearly(keep, locs, match):
    with pytest.raises(EdgepruneError, match=match):
        resolve("deit_small:dynamicvit", keep=keep, locs=locs)


def test_locs_and_keep_together():
    src = resolve("deit_tiny:dynamicvit", keep="0.8,0.5", locs="4,8")
    assert src.plan.tokens_per_block == (197,) * 4 + (157,) * 4 + (99,) * 4


@pytest.mark.parametrize(
    "bad", ["deit_huge", "deit_small:nomethod", "what is this", "deit_small:dynamicvit@x"]
)
def test_bad_builtin_specs(bad):
    with pytest.raises(EdgepruneError):
        resolve(bad)
