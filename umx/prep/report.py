"""report.json: every file prep looked at, what was odd about it, what prep did."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Report:
    entries: list[dict] = field(default_factory=list)

    def add(self, split: str, track: str, file: str, status: str, problem: str = "", action: str = "") -> None:
        self.entries.append({"split": split, "track": track, "file": file, "status": status,
                             "problem": problem, "action": action})

    def problems(self) -> list[dict]:
        return [e for e in self.entries if e["status"] != "ok"]

    def summary(self) -> dict:
        return dict(Counter(e["status"] for e in self.entries))

    def to_json(self, tracks_kept: dict[str, int]) -> dict:
        return {"summary": {"files": self.summary(), "tracks_kept": tracks_kept}, "files": self.entries}
