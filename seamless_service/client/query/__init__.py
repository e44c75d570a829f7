"""Queries and views: planning `ps` over hosts and clusters, running it, and showing the rows.

ps.py      plan the queries of one `ps` (per host, per cluster), run them in parallel, assemble
rows.py    rows from op results: labels, merging, filters, the JSON record fields
render.py  the table and NDJSON output
watch.py   `ps --watch`: the same queries again and again, printing what changed
"""
