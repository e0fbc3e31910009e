"""The per-view feature-age histogram: bucket counts equal a brute-force count, on both the small
(bisect) and the large (numpy) path, with ages exactly on bucket bounds."""

from __future__ import annotations

import math
import random

import pytest
from prometheus_client.parser import text_string_to_metric_families

from feature_platform.serving.metrics import AGE_BUCKETS, ServingMetrics


@pytest.mark.parametrize("n", [1, 10, 63, 64, 5000])
def test_age_histogram_matches_brute_force(n):
    rng = random.Random(n)
    ages = [rng.choice([rng.uniform(0, 3 * 86400), rng.choice(AGE_BUCKETS)]) for _ in range(n)]
    m = ServingMetrics()
    half = n // 2
    m.ages.observe_many("v", 2, ages[:half])   # two calls accumulate
    m.ages.observe_many("v", 2, ages[half:])
    samples = {}
    for fam in text_string_to_metric_families(m.render()[0].decode()):
        for s in fam.samples:
            if s.name.startswith("fp_served_feature_age_seconds"):
                assert s.labels["view"] == "v" and s.labels["version"] == "2"
                samples[(s.name, s.labels.get("le"))] = s.value
    for b in AGE_BUCKETS:
        assert samples[("fp_served_feature_age_seconds_bucket", repr(float(b)))] == sum(a <= b for a in ages)
    assert samples[("fp_served_feature_age_seconds_bucket", "+Inf")] == n
    assert samples[("fp_served_feature_age_seconds_count", None)] == n
    assert math.isclose(samples[("fp_served_feature_age_seconds_sum", None)], math.fsum(ages), rel_tol=1e-9)
