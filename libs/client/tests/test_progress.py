"""The terminal progress bar: its line, its rate and ETA, and how it redraws."""

from __future__ import annotations

import io

import pytest

from sous_client.progress import (
    ProgressBar,
    RateMeter,
    draw_bar,
    format_bytes,
    format_duration,
    render,
)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Tty(io.StringIO):
    encoding = "utf-8"


@pytest.mark.parametrize(
    ("count", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1536, "1.5 KiB"),
        (5 * 1024**2, "5.0 MiB"),
        (3 * 1024**4, "3.0 TiB"),
    ],
)
def test_sizes_are_binary_units(count: int, text: str) -> None:
    assert format_bytes(count) == text


def test_durations_are_clock_style() -> None:
    assert [format_duration(s) for s in (0, 9.6, 75, 3725)] == ["0:00", "0:10", "1:15", "1:02:05"]


def test_the_bar_fills_in_eighths_or_in_ascii() -> None:
    assert draw_bar(0, 4) == "    "
    assert draw_bar(0.5, 4) == "██  "
    assert draw_bar(0.56, 4) == "██▏ "
    assert draw_bar(1, 4) == "████"
    assert draw_bar(1.7, 4) == "████", "clamped"
    assert draw_bar(0.5, 4, unicode=False) == "##.."


def test_a_byte_line_shows_percent_amount_rate_and_eta() -> None:
    line = render("uploading", 3 * 1024**2, 4 * 1024**2, rate=1024**2, eta=1, columns=80)
    assert line.startswith("uploading   │")
    assert line.endswith("│  75%  3.0 MiB/4.0 MiB  1.0 MiB/s  ETA 0:01")
    assert len(line) <= 79


def test_a_percent_line_a_finished_line_and_an_unknown_total() -> None:
    line = render("transcode", 40, 100, unit="percent", rate=8.0, eta=7.5, unicode=False)
    assert line.endswith("]  40%  8.0 %/s  ETA 0:08")
    finished = render("transcode", 100, 100, unit="percent", eta=0, elapsed=65)
    assert finished.endswith("100%  in 1:05")
    assert render("downloading", 2048, None, rate=1024) == "downloading 2.0 KiB  1.0 KiB/s"


def test_a_narrow_terminal_keeps_the_bar_readable_and_the_line_short() -> None:
    line = render("uploading", 1, 2, rate=1, eta=1, columns=40)
    assert len(line) == 39
    assert "│" in line


def test_the_rate_is_measured_over_a_recent_window() -> None:
    meter = RateMeter(window=5)
    assert meter.rate is None
    for second in range(11):  # 100 a second for 5 s, then 10 a second
        meter.add(second, 100 * min(second, 5) + 10 * max(0, second - 5))
    assert meter.rate == pytest.approx(10), "the early burst has left the window"


def test_a_bar_redraws_in_place_at_most_every_interval_then_ends_its_line() -> None:
    clock, tty = Clock(), Tty()
    bar = ProgressBar("uploading", stream=tty, clock=clock, min_interval=0.5)
    clock.now = 1.0
    bar.update(1024, 4096)
    clock.now = 1.2
    bar.update(2048, 4096)  # too soon: recorded, not drawn
    clock.now = 2.0
    bar.update(3072, 4096)
    frames = tty.getvalue().split("\r")[1:]
    assert len(frames) == 2
    assert all(frame.endswith("\x1b[K") for frame in frames)
    assert "3.0 KiB/4.0 KiB  1.5 KiB/s  ETA 0:01" in frames[-1]

    clock.now = 3.0
    bar.update(4096)
    bar.finish()
    bar.finish()
    assert tty.getvalue().endswith("100%  4.0 KiB/4.0 KiB  1.3 KiB/s  in 0:03\x1b[K\n")
    assert tty.getvalue().count("\n") == 1


def test_a_given_eta_wins_over_the_measured_one_and_ascii_terminals_get_ascii() -> None:
    clock, plain = Clock(), io.StringIO()
    bar = ProgressBar("transcode", unit="percent", total=100, stream=plain, clock=clock)
    clock.now = 2.0
    bar.update(50, eta=30)
    assert "[####" in plain.getvalue()
    assert plain.getvalue().rstrip("\x1b[K").endswith("50%  25.0 %/s  ETA 0:30")
    bar.abandon()
    assert plain.getvalue().endswith("\n")
