"""The process runtime's termination message, as a kubelet reads it (no cluster)."""

from __future__ import annotations

from pathlib import Path

from modelpilot_dev.runtime import termination_message


def test_the_file_wins_and_keeps_its_last_4096_bytes(tmp_path: Path) -> None:
    message, log = tmp_path / "termination-log", tmp_path / "container.log"
    log.write_bytes(b"earlier run\nTraceback\n")
    message.write_text("the model needs packages this serving image does not have: catboost==1.2.0")
    assert termination_message(message, log, 0, 1, "FallbackToLogsOnError").startswith("the model needs packages")
    message.write_bytes(b"a" * 5000 + b"END")
    text = termination_message(message, log, 0, 1, "File")
    assert len(text) == 4096 and text.endswith("END")


def test_an_empty_file_falls_back_to_the_end_of_this_runs_log_only_on_error(tmp_path: Path) -> None:
    message, log = tmp_path / "termination-log", tmp_path / "container.log"
    message.write_bytes(b"")
    earlier = b"previous run's last words\n"
    log.write_bytes(earlier + b"".join(f"line {i}\n".encode() for i in range(200)) + b"ImportError: boom\n")
    text = termination_message(message, log, len(earlier), 1, "FallbackToLogsOnError")
    assert text.endswith("ImportError: boom\n") and len(text.encode()) <= 2048
    assert len(text.splitlines()) <= 80 and "previous run" not in text
    assert termination_message(message, log, len(earlier), 0, "FallbackToLogsOnError") == ""  # exit 0: no fallback
    assert termination_message(message, log, len(earlier), 1, "File") == ""  # the default policy: no fallback
    short = tmp_path / "short.log"
    short.write_bytes(earlier + b"Killed\n")
    assert termination_message(message, short, len(earlier), 137, "FallbackToLogsOnError") == "Killed\n"
    assert termination_message(tmp_path / "missing", tmp_path / "missing.log", 0, 1, "FallbackToLogsOnError") == ""
