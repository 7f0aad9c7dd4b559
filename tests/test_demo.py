"""The demo's verdict line: a gap counts only when every seed agrees and beats the seed spread."""

from steadylm.demo import gap_verdict


def _runs(base, mlra):
    return [{"variant": v, "seed": s, "final_loss": x}
            for v, losses in (("pre_ln", base), ("mlra", mlra)) for s, x in zip((1, 2), losses)]


def test_a_gap_larger_than_the_seed_spread_names_the_leader():
    line = gap_verdict(_runs([5.60, 5.62], [5.30, 5.33]))
    assert "-0.300 (seed 1)" in line and "-0.290 (seed 2)" in line
    assert "exceeds the seed spread" in line and "mlra is ahead" in line


def test_a_gap_within_the_seed_spread_gives_no_winner():
    # same sign in both seeds, but pre-LN's seeds differ by 0.4, more than either gap
    line = gap_verdict(_runs([5.2, 5.6], [5.1, 5.4]))
    assert "within the seed spread" in line and "ahead" not in line
    # opposite signs
    assert "within the seed spread" in gap_verdict(_runs([5.5, 5.5], [5.4, 5.6]))


def test_a_missing_or_diverged_arm_gives_no_verdict():
    assert "no verdict" in gap_verdict(_runs([5.5, None], [5.4, 5.3]))
    assert "no verdict" in gap_verdict(_runs([5.5, 5.4], [5.4, 5.3])[:3])
