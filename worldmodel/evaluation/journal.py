"""An evaluation's finished tasks on disk, so that a crash or Ctrl-C loses none of them."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from worldmodel.evaluation.protocol import EpisodeResult, GoalTask
from worldmodel.files import DirectoryLock, changed_keys


class TaskJournal:
    """The finished tasks of an evaluation, one JSON line each, appended and flushed as they end.

    The first line holds ``header``: the settings that decide the results. Every later line carries
    ``chain``, the sha256 of the previous line's ``chain`` (the header's hash for the first) and of
    its own content, so a line edited, removed or moved by hand breaks the chain and the journal is
    refused where it is read back. With ``resume``, an existing journal is read back (:attr:`done`:
    agent -> task index -> result) after checking that its header equals this one; a line cut short
    by a kill is dropped. Without it, an existing journal is moved aside to
    ``<stem>.prev-<n>.jsonl`` (the first unused ``n``) and a new one started.
    """

    def __init__(self, path: str | Path, header: dict, resume: bool = False):
        self.path, self.header = Path(path), header
        self.chain = chained("", {"header": header})
        self.done: dict[str, dict[int, EpisodeResult]] = {}
        # one process per journal: a second evaluation with the same settings in the same directory stops here
        self.lock = DirectoryLock(self.path.parent, "an evaluation with these settings in", f".{self.path.name}.lock")
        self.lock.acquire()
        try:
            self._open(resume)
        except BaseException:
            self.release()
            raise

    def _open(self, resume: bool) -> None:
        if resume and self.path.exists():
            self._read()
            return
        if resume:
            others = sorted(p.name for p in self.path.parent.glob("*.tasks.jsonl") if p != self.path
                            and ".prev-" not in p.name and _unfinished(p))
            print(f"resume=true: no unfinished evaluation with these settings in {self.path.parent}"
                  + (f" (unfinished ones with other settings: {', '.join(others)})" if others else "")
                  + "; starting from the first task", file=sys.stderr)
        if self.path.exists():
            kept = next(k for n in range(1, 1 << 20)
                        if not (k := self.path.with_name(f"{self.path.stem}.prev-{n}{self.path.suffix}")).exists())
            os.replace(self.path, kept)
            print(f"an earlier evaluation with these settings was not finished; its tasks are kept in {kept} "
                  f"(pass resume=true to continue one instead of starting over)", file=sys.stderr)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "w") as f:
            f.write(json.dumps({"header": self.header}) + "\n")

    def _read(self) -> None:
        text = self.path.read_text()
        if not text.endswith("\n"):  # a line cut short by a kill: drop it from the file too, so appends stay whole
            text = text[: text.rfind("\n") + 1]
            self.path.write_text(text)
            print(f"{self.path}: dropped its unfinished last line", file=sys.stderr)
        lines = text.splitlines()
        try:
            stored = json.loads(lines[0])["header"]
        except (IndexError, KeyError, TypeError, json.JSONDecodeError):
            raise ValueError(f"{self.path} is not a task journal (no header line); remove it to start over") from None
        changed = changed_keys(stored, self.header)
        if changed:
            raise ValueError(f"cannot resume {self.path}: it was written with other settings: {'; '.join(changed)} "
                             f"(journal -> now)")
        for n, line in enumerate(lines[1:], start=2):
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                raise ValueError(f"{self.path}: line {n} is not JSON; the journal is corrupt") from None
            chain = r.pop("chain", None) if isinstance(r, dict) else None
            if chain != chained(self.chain, r):
                raise ValueError(f"{self.path}: line {n} was edited, moved or removed after it was written (its chain "
                                 f"hash does not follow from the lines before it); its results cannot be trusted: "
                                 f"remove the journal to start over")
            self.chain = chain
            if "agent" in r:  # not the "finished" mark
                self.done.setdefault(r["agent"], {})[r["index"]] = EpisodeResult.from_json(r)
        print(f"resuming {self.path}: " + (", ".join(f"{a} {len(d)} tasks" for a, d in self.done.items()) or "no tasks")
              + " done")

    def finish(self, final: str | Path) -> Path:
        """The evaluation is complete: move the journal to ``final`` (next to its result), marked finished."""
        self._write({"finished": True})
        os.replace(self.path, final)
        self.release()
        return Path(final)

    def release(self) -> None:
        """Let another process continue this journal (also done by this process's exit)."""
        self.lock.release()

    def append(self, agent: str, index: int, task: GoalTask, result: EpisodeResult) -> None:
        self._write({"agent": agent, "index": index, **task.describe, **result.to_json()})

    def _write(self, line: dict) -> None:
        self.chain = chained(self.chain, line)
        with open(self.path, "a") as f:
            f.write(json.dumps({**line, "chain": self.chain}) + "\n")
            f.flush()
            os.fsync(f.fileno())


def _unfinished(path: Path) -> bool:
    """Whether a journal's last line is not the ``finished`` mark."""
    lines = path.read_text().splitlines()
    try:
        return not lines or not json.loads(lines[-1]).get("finished")
    except (json.JSONDecodeError, AttributeError):
        return True


def chained(previous: str, line: dict) -> str:
    """The chain hash of a journal line: sha256 of the previous line's hash and this line's content."""
    return hashlib.sha256((previous + json.dumps(line, sort_keys=True)).encode()).hexdigest()
