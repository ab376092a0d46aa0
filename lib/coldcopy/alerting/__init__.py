"""Alerts that reach people: the tick's alert check and the emails it sends."""
