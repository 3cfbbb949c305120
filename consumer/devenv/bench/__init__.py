"""`make bench`: the service measured against a raw drain (A), its own CPU ceiling (B) and a naive
consumer (C), as real processes (D) against a loopback sink. Dev tooling: never imported by the
service. `rounds` is the plan, `service` the D runs, `sink` the vendor stand-in, `report` the
table; `ceiling.py` also runs as a script against another commit's code."""
