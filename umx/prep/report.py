"""report.json: every file prep looked at, what was odd about it, what prep did.

Each entry: split, track, file, class (ok, unreadable, truncated, nan, sample_rate,
channels, length, short, silent, clipping, missing, empty, duplicate_id, unsafe_name),
status (ok / repaired / reported / skipped), problem, action. The summary counts
entries per class and tracks kept / repaired / skipped per split.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Report:
    entries: list[dict] = field(default_factory=list)

    def add(self, split: str, track: str, entry: dict) -> None:
        self.entries.append({"split": split, "track": track, **entry})

    def problems(self, statuses: tuple[str, ...] = ("repaired", "reported", "skipped")) -> list[dict]:
        return [e for e in self.entries if e["status"] in statuses]

    def summary(self, kept: dict[str, int]) -> dict:
        by_track: dict[tuple[str, str], set[str]] = {}
        for e in self.entries:
            by_track.setdefault((e["split"], e["track"]), set()).add(e["status"])
        tracks: dict[str, Counter] = {}
        for (split, _), statuses in by_track.items():
            outcome = "skipped" if "skipped" in statuses else "repaired" if "repaired" in statuses else "kept"
            tracks.setdefault(split, Counter())[outcome] += 1
        return {"classes": dict(Counter(e["class"] for e in self.entries if e["class"] != "ok")),
                "tracks": {s: dict(c) for s, c in sorted(tracks.items())}, "tracks_kept": kept}

    def to_json(self, kept: dict[str, int]) -> dict:
        return {"summary": self.summary(kept), "files": self.entries}

    def summary_lines(self, kept: dict[str, int]) -> list[str]:
        s = self.summary(kept)
        lines = [f"  {split}: {c.get('kept', 0)} kept, {c.get('repaired', 0)} repaired, {c.get('skipped', 0)} skipped"
                 for split, c in s["tracks"].items()]
        if s["classes"]:
            lines.append("  problems: " + ", ".join(f"{k} {v}" for k, v in sorted(s["classes"].items())))
        return lines
