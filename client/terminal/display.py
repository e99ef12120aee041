"""How `vtwatch watch` and `vtwatch follow` show a job: on a terminal a live progress bar (rich)
with the status, attempts and a countdown to the next poll; otherwise one plain line per
update, for logs and pipes."""

from __future__ import annotations

import time
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TaskID,
    TaskProgressColumn,
    TextColumn,
)
from rich.text import Text


class _NextPoll(ProgressColumn):
    """Attempts so far and a live countdown to the next poll."""

    def render(self, task: Task) -> Text:
        attempts = task.fields.get("attempts", 0)
        next_at = task.fields.get("next_at")
        countdown = ""
        if next_at is not None and not task.finished:
            countdown = f" · next poll in {max(0.0, next_at - time.monotonic()):4.1f}s"
        note = task.fields.get("note") or ""
        return Text(f"attempt {attempts}{countdown}{note}")


class Display:
    """`with Display(title) as show: show.update(...)`; `show.final(status)` at the end."""

    def __init__(self, title: str, console: Console | None = None) -> None:
        self.title = title
        self.console = console or Console()
        self.live = self.console.is_terminal
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def __enter__(self) -> Display:
        if self.live:
            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TaskProgressColumn(),
                _NextPoll(),
                console=self.console,
            )
            self._progress.start()
            self._task = self._progress.add_task(self.title, total=100, attempts=0)
        else:
            print(self.title, flush=True)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def update(
        self,
        status: str,
        attempts: int,
        progress: float | None = None,
        next_poll_in: float | None = None,
        note: str | None = None,
    ) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(
                self._task,
                description=status,
                completed=progress if progress is not None else 0,
                attempts=attempts,
                next_at=None if next_poll_in is None else time.monotonic() + next_poll_in,
                note=f" ({note})" if note else "",
            )
            return
        details = [f"attempt {attempts}"]
        if progress is not None:
            details.append(f"progress {progress:.0f}%")
        if next_poll_in is not None:
            details.append(f"next poll in {next_poll_in:.1f}s")
        if note:
            details.append(note)
        print(f"{status}: {', '.join(details)}", flush=True)

    def final(
        self, status: str, attempts: int, progress: float | None = None, note: str | None = None
    ) -> None:
        """The end, with why when it is an error (`note`)."""
        done = 100.0 if status == "completed" else progress
        self.update(status, attempts, done, note=note)
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, next_at=None)
            self._progress.stop_task(self._task)
