"""The run record of an `mlvos run` output folder: which run wrote the masks there and whether it
finished, so that a rerun into the same folder after a crash or a kill ends complete.

`<out>/.mlvos-run.json` (written atomically, like every mask) holds:

    status       "running" (written before the first mask), "complete" (after the last one) or
                 "failed" (an error stopped the run; with "error" and "done")
    fingerprint  what decides the masks: input, model, backend, precision, options, annotations
    masks        the names (without .png) of the masks this run writes
    stale        masks of an earlier run still to be deleted (normally empty)

A rerun cannot continue an interrupted one exactly: the predictor's memory bank (the features of
earlier frames) is not in the masks, so it starts over. It deletes every mask the record names
before writing its own, so the folder never mixes two runs and a mask present under a "running"
record is one the current run wrote. PNG files of a folder without a record were not written by
`mlvos run` (or by a version before the record): they are overwritten where this run writes the
same name and otherwise left alone, with a warning.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from mlvos.fileio import atomic_write_text, stable_json

RECORD = ".mlvos-run.json"
RUNNING, COMPLETE, FAILED = "running", "complete", "failed"

logger = logging.getLogger(__name__)


class RunFolder:
    """An `mlvos run` output folder of `<name>.png` masks and its run record.

    Example:
        folder = RunFolder(out)
        folder.begin(fingerprint, names)      # logs what it found and what it does
        for name, labels in ...:
            write_mask(out / f"{name}.png", labels)
        folder.finish()                        # or folder.fail(done, str(error))
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.record = self.path / RECORD
        self.data: dict | None = None

    def previous(self) -> dict | None:
        """The record found in the folder; {} for an unreadable one, None without one."""
        if not self.record.is_file():
            return None
        try:
            data = json.loads(self.record.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def begin(self, fingerprint: dict, names: list[str]) -> None:
        """Claim the folder for a run writing `<name>.png` for each of `names`: log what an
        earlier run left and that this one starts over, write the "running" record, then delete
        the earlier run's masks (its torn temporaries go with the first write: mlvos.fileio).

        Args:
            fingerprint: JSON-serializable values that decide the masks (compared with the
                previous record's, to say what changed).
            names: the masks' names, without .png.
        """
        old = self.previous()
        owned: list[str] = []
        if old is None:
            self._warn_foreign(names)
        else:
            # an unreadable record still says the folder is a run folder: all its PNGs are masks
            owned = sorted({*_names(old.get("masks")), *_names(old.get("stale"))} if old
                           else {p.stem for p in self.path.glob("*.png")})
            logger.info(self._describe(old, fingerprint))
        self.data = {"status": RUNNING, "fingerprint": fingerprint, "masks": list(names),
                     "stale": owned}
        self._write()
        if old is not None:
            for name in owned:
                (self.path / f"{name}.png").unlink(missing_ok=True)
            self.data["stale"] = []
            self._write()

    def finish(self) -> None:
        """Mark the run complete (every mask written)."""
        self.data.update(status=COMPLETE, stale=[])
        self._write()

    def fail(self, done: int, error: str) -> None:
        """Record that an error stopped the run after `done` masks."""
        self.data.update(status=FAILED, done=done, error=error)
        self._write()

    # ------------------------------------------------------------------------------ internals
    def _write(self) -> None:
        atomic_write_text(self.record, stable_json(self.data))

    def _describe(self, old: dict, fingerprint: dict) -> str:
        where = str(self.path)
        if not old:
            return (f"{where} holds an unreadable run record ({RECORD}); deleting its PNG "
                    "masks and starting over")
        masks = _names(old.get("masks"))
        done = sum((self.path / f"{name}.png").is_file() for name in masks)
        status = old.get("status")
        if status == COMPLETE:
            state = f"a complete run of {len(masks)} frames"
        elif status == FAILED:
            state = (f"a run that failed after {old.get('done', done)} of {len(masks)} frames "
                     f"({old.get('error', 'no error recorded')})")
        else:
            state = f"a run that stopped after {done} of {len(masks)} frames (killed or crashed)"
        previous = old.get("fingerprint") or {}
        changed = sorted(k for k in {*previous, *fingerprint}
                         if previous.get(k) != fingerprint.get(k))
        if changed:
            return (f"{where} holds the masks of {state} with other settings (changed: "
                    f"{', '.join(changed)}); replacing them")
        if status == COMPLETE:
            return f"{where} holds {state} with the same settings; writing it again"
        return (f"{where} holds {state} with the same settings; starting over from the first "
                "frame: the predictor's memory bank (features of the frames before) cannot be "
                "restored from masks")

    def _warn_foreign(self, names: list[str]) -> None:
        if not self.path.is_dir():
            return
        mine = set(names)
        others = sorted(p.name for p in self.path.glob("*.png") if p.stem not in mine)
        if others:
            logger.warning(
                f"{self.path} holds {len(others)} PNG file(s) that this run does not write and "
                f"no run record ({RECORD}), e.g. {others[0]}; they are left as they are: delete "
                "them or choose an empty --out, so the folder holds this run's masks only"
            )


def _names(value) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []
