"""Issue 5: the measured half — load, kill -9, faults, smuggling, open relay, stalls, flood, DB outage."""
