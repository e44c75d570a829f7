"""Demo services for a first look at seamless-service on one machine: the real Seamless services when installed ([services] extra), else a small built-in stand-in."""
