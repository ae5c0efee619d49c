"""The metrics module's own behaviour: labelled children are looked up once and count where Prometheus
expects them (issue 8 made `labels` remember its children)."""

from __future__ import annotations

import pytest

from mailrelay.metrics import Metrics


def test_labels_hands_out_one_child_per_series_however_it_is_asked() -> None:
    metrics = Metrics()
    counter = metrics.smtp_replies
    by_name = counter.labels(command="MAIL", **{"class": "2xx"})
    assert counter.labels(command="MAIL", **{"class": "2xx"}) is by_name
    by_name.inc()
    counter.labels(**{"class": "2xx"}, command="MAIL").inc()
    counter.labels("MAIL", "2xx").inc()
    counter.labels(command="RCPT", **{"class": "2xx"}).inc()
    sample = metrics.registry.get_sample_value
    assert sample("mailrelay_smtp_replies_total", {"command": "MAIL", "class": "2xx"}) == 3
    assert sample("mailrelay_smtp_replies_total", {"command": "RCPT", "class": "2xx"}) == 1


def test_labels_still_refuses_a_wrong_label_name_every_time() -> None:
    counter = Metrics().detected
    for _ in range(2):
        with pytest.raises(ValueError, match="label"):
            counter.labels(tenant="example")
