"""Benchmark harness for issue 8: mailrelay against its pass-through floor and Postfix, plus stage timings."""
