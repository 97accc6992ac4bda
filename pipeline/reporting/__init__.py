"""Reporting blocks: plots and energy accounting."""
