"""start, restart and reset: the service lifecycle on top of the ops (CLI and Python API).

control.py  start_service, restart_service, reset_plan/reset
launch.py   a resolved service's launcher configuration -> the `start` op's arguments
"""
