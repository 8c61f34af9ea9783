"""Monitoring: Evidently reports of current person features vs the champion's training reference."""
