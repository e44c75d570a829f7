"""Configuration: what clusters.yaml, seamless.yaml and the profile say, through seamless-config.

selection.py  what the user selected (Selection) and what it resolves to (Resolved)
session.py    seamless-config's global state held and restored around each use; its
              loading errors as one-line UsageErrors
resolve.py    --service/--cluster/--project/--stage, or a launcher key, -> one Resolved service
clusters.py   the clusters: names, the local one, the project's, hosts and data roots

Imports nothing from transport/, query/, lifecycle/, keeper/ or cli/.
"""
