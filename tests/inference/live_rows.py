"""Scripted test denoisers speak of prompts; the samplers' batch holds only the rows still
generating (finished rows leave it). This tells a script which prompts the batch holds."""

from __future__ import annotations

from twotower_train.decoding.batching import Collector


def follow_live_rows(scripts: list, monkeypatch) -> None:
    """``script.live`` = the prompts (by index) in the batch, updated whenever rows leave, for
    every script in ``scripts`` (a list the caller may still add to)."""
    leave = Collector.leave

    def tracked(self, device):
        stay = leave(self, device)
        for script in scripts:
            script.live = list(self.live)
        return stay

    monkeypatch.setattr(Collector, "leave", tracked)
