"""A one-line terminal progress bar with percent, rate and ETA, redrawn in place.

No dependency: the line is rendered by :func:`render` (a pure function, tested on its
own) and redrawn with a carriage return, at most every ``min_interval`` seconds::

    bar = ProgressBar("uploading", unit="bytes")
    for sent, total in chunks_sent():
        bar.update(sent, total)
    bar.finish()
"""

from __future__ import annotations

import shutil
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Literal, TextIO

Unit = Literal["bytes", "percent"]

#: Seconds of samples the rate is measured over (a window, so a stall shows quickly).
RATE_WINDOW_SECONDS = 5.0
#: Fewest and most characters the bar itself takes.
MIN_BAR_WIDTH = 10
MAX_BAR_WIDTH = 40
#: The label column's width (labels are padded so consecutive bars line up).
LABEL_WIDTH = 11
UNICODE_BLOCKS = " ▏▎▍▌▋▊▉█"
CLEAR_TO_END = "\x1b[K"


def format_bytes(count: float) -> str:
    """``1536`` → ``1.5 KiB``; whole bytes below a KiB."""
    if count < 1024:
        return f"{int(count)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        count /= 1024
        if count < 1024 or unit == "TiB":
            break
    return f"{count:.1f} {unit}"


def format_duration(seconds: float) -> str:
    """``75`` → ``1:15``; ``3725`` → ``1:02:05``."""
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def draw_bar(fraction: float, width: int, unicode: bool = True) -> str:
    """A bar ``width`` characters wide, filled to ``fraction`` (eighths of a cell in Unicode)."""
    fraction = min(1.0, max(0.0, fraction))
    if not unicode:
        filled = int(fraction * width)
        return "#" * filled + "." * (width - filled)
    eighths = int(fraction * width * 8)
    full, partial = divmod(eighths, 8)
    bar = UNICODE_BLOCKS[-1] * full
    if full < width:
        bar += UNICODE_BLOCKS[partial] + " " * (width - full - 1)
    return bar


def render(
    label: str,
    done: float,
    total: float | None,
    *,
    unit: Unit = "bytes",
    rate: float | None = None,
    eta: float | None = None,
    elapsed: float | None = None,
    columns: int = 80,
    unicode: bool = True,
) -> str:
    """The bar's line: ``label  [bar]  42%  1.2/3.0 MiB  512.0 KiB/s  ETA 0:04``.

    ``total`` None (size unknown) leaves out the bar, percent and ETA. ``elapsed``
    (set once finished) replaces the ETA with the time taken.
    """
    parts: list[str] = []
    if unit == "bytes":
        amount = (
            format_bytes(done) if total is None else f"{format_bytes(done)}/{format_bytes(total)}"
        )
        parts.append(amount)
        if rate is not None:
            parts.append(f"{format_bytes(rate)}/s")
    elif rate is not None:
        parts.append(f"{rate:.1f} %/s")
    if elapsed is not None:
        parts.append(f"in {format_duration(elapsed)}")
    elif eta is not None and total is not None:
        parts.append(f"ETA {format_duration(eta)}")
    head = label.ljust(LABEL_WIDTH)
    tail = "  ".join(parts)
    if total is None:
        return f"{head} {tail}"[: columns - 1]
    fraction = done / total if total > 0 else 1.0
    percent = f"{min(100, int(fraction * 100)):3d}%"
    room = columns - 1 - len(head) - len(percent) - len(tail) - 6
    width = min(MAX_BAR_WIDTH, max(MIN_BAR_WIDTH, room))
    left, right = ("│", "│") if unicode else ("[", "]")
    line = f"{head} {left}{draw_bar(fraction, width, unicode)}{right} {percent}  {tail}"
    return line.rstrip()[: columns - 1]


class RateMeter:
    """Units per second over the last ``window`` seconds of samples."""

    def __init__(self, window: float = RATE_WINDOW_SECONDS) -> None:
        self.window = window
        self._samples: deque[tuple[float, float]] = deque()

    def add(self, when: float, done: float) -> None:
        self._samples.append((when, done))
        while len(self._samples) > 2 and when - self._samples[1][0] >= self.window:
            self._samples.popleft()

    @property
    def rate(self) -> float | None:
        if len(self._samples) < 2:
            return None
        (start, first), (end, last) = self._samples[0], self._samples[-1]
        if end <= start:
            return None
        return max(0.0, (last - first) / (end - start))


class ProgressBar:
    """Draws :func:`render` lines on ``stream`` (stderr by default), in place.

    The rate and, when ``update`` is not given one, the ETA are measured here.
    """

    def __init__(
        self,
        label: str,
        *,
        unit: Unit = "bytes",
        total: float | None = None,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
        min_interval: float = 0.1,
    ) -> None:
        self.label = label
        self.unit: Unit = unit
        self.total = total
        self.done = 0.0
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock
        #: Least seconds between two redraws (the last state is always drawn by ``finish``).
        self.min_interval = min_interval
        self.started = clock()
        self.meter = RateMeter()
        self.meter.add(self.started, 0.0)
        self._eta: float | None = None
        self._last_draw = float("-inf")
        self._finished = False
        encoding = (getattr(self.stream, "encoding", None) or "ascii").lower()
        self.unicode = encoding.replace("-", "") in {"utf8", "utf16", "utf32"}

    def update(self, done: float, total: float | None = None, eta: float | None = None) -> None:
        """Record ``done`` units (of ``total``); ``eta`` overrides the measured ETA in seconds."""
        now = self.clock()
        self.done = done
        if total is not None:
            self.total = total
        self.meter.add(now, done)
        self._eta = eta
        if now - self._last_draw >= self.min_interval:
            self._draw(now)

    def eta(self) -> float | None:
        if self._eta is not None:
            return self._eta
        rate = self.meter.rate
        if self.total is None or not rate:
            return None
        return max(0.0, (self.total - self.done) / rate)

    def line(self, now: float | None = None, *, finished: bool = False) -> str:
        now = self.clock() if now is None else now
        columns = shutil.get_terminal_size(fallback=(80, 24)).columns
        return render(
            self.label,
            self.done,
            self.total,
            unit=self.unit,
            rate=self.meter.rate,
            eta=self.eta(),
            elapsed=now - self.started if finished else None,
            columns=columns,
            unicode=self.unicode,
        )

    def _draw(self, now: float, *, finished: bool = False) -> None:
        self._last_draw = now
        self.stream.write("\r" + self.line(now, finished=finished) + CLEAR_TO_END)
        if finished:
            self.stream.write("\n")
        self.stream.flush()

    def finish(self) -> None:
        """Draw the final state with the time taken, and end the line (once)."""
        if not self._finished:
            self._finished = True
            self._draw(self.clock(), finished=True)

    def abandon(self) -> None:
        """End the line where it is (an interruption), without claiming completion."""
        if not self._finished:
            self._finished = True
            self.stream.write("\n")
            self.stream.flush()
