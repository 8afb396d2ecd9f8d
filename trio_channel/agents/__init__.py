"""Agents that ship with trio_channel (the daemon's default echo agent)."""
